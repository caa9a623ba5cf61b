"""EXIF orientation shared by an image and its mask in the converter and the folder reader; 16-bit
PNGs read."""
import numpy as np
import pytest
from PIL import Image

import fss_1000_image_to_tfrecord as converter
from data.tasks import load_tasks
from segmenter.folder import load_user_task
from segmenter.images import read_pair, read_rgb

SIZE = 32


def _rotated_pair(folder, stem, orientation=6):
    """A square JPEG whose stored pixels have a bright block top-left, tagged with an EXIF
    orientation, and its mask aligned with the stored pixels (as a pixel-array tool writes it)."""
    image = np.full((SIZE, SIZE, 3), 40, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    image[2:14, 2:20] = 230
    mask[2:14, 2:20] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(mask).save(folder / f"{stem}.png")


def _agreement(images, masks):
    """Fraction of mask pixels on the bright block (1.0 when image and mask line up)."""
    bright = images.mean(-1) > 128
    return (bright & (masks > 0)).sum() / max((masks > 0).sum(), 1)


def _task(tmp_path, orientation=6):
    folder = tmp_path / "task"
    for stem in ("1", "2"):
        _rotated_pair(folder / "support", stem, orientation)
    _rotated_pair(folder / "query", "q", orientation)
    return folder


def test_exif_orientation_moves_image_and_mask_together_everywhere(tmp_path):
    task = load_user_task(str(_task(tmp_path)))
    assert _agreement(np.stack(task.support_images), np.stack(task.support_masks)) > 0.95
    query, truth = read_pair(str(_task(tmp_path / "again") / "query" / "q.jpg"),
                             str(tmp_path / "again" / "task" / "query" / "q.png"))
    assert _agreement(query, truth) > 0.95  # a ground truth scored against a query alike
    # Shown as the photo is displayed: orientation 6 turns the top-left block to the top right.
    assert task.support_images[0][4, SIZE - 5].mean() > 128
    # The converter applies the same rule, so shards hold the very same pairs.
    for cls in ("a", "b"):
        for stem in ("1", "2"):
            _rotated_pair(tmp_path / "fss" / cls, stem)
    converter.convert(str(tmp_path / "fss"), str(tmp_path / "shards"), image_size=SIZE, log=None)
    shard = load_tasks(str(tmp_path / "shards"), SIZE)["a"]
    assert np.array_equal(shard.masks[0], task.support_masks[0])
    assert np.abs(shard.images[0].astype(int) - task.support_images[0]).max() < 16


def test_mask_with_its_own_other_orientation_is_refused(tmp_path):
    folder = _task(tmp_path)
    mask = Image.open(folder / "support" / "1.png")
    exif = Image.Exif()
    exif[0x0112] = 3
    mask.save(folder / "support" / "1.png", exif=exif.tobytes())
    with pytest.raises(ValueError, match="EXIF orientation 3"):
        load_user_task(str(folder))


def test_16_bit_and_other_png_modes_are_read_not_clipped(tmp_path):
    folder = _task(tmp_path, orientation=1)
    ramp = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 60)  # up to 61380
    Image.fromarray(ramp, mode="I;16").save(folder / "query" / "deep.png")
    deep = read_rgb(str(folder / "query" / "deep.png"))
    expected = np.rint(ramp / 257.0)
    assert np.abs(deep[..., 0].astype(int) - expected).max() <= 1  # a ramp, not solid white
    assert deep.min() == 0 and deep.max() == 239
