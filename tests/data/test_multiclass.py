"""Multi-class pre-training data: MTL-Segmentation's grey-level COCO labels decoded to the nearest
class,
COCO-Stuff id maps with 255 kept, every bad file reported by path and skipped."""
import os

import numpy as np
import pytest
from PIL import Image

from data.multiclass import IGNORE_LABEL, decode_grey_label, load_multiclass
from data.problems import ProblemsFound
from tests.fixtures.multiclass import draw, make_coco_stuff, make_seed_coco


def test_grey_levels_decode_to_the_nearest_class_not_by_truncation():
    # K = 5: levels 0, 63.75, 127.5, 191.25, 255; MTL-Segmentation's int(v * 4 / 255) made 63 class
    # 0
    grey = np.array([[0, 63, 64, 127, 128], [191, 192, 254, 255, 1]], np.uint8)
    ids = decode_grey_label(Image.fromarray(grey), 5)
    np.testing.assert_array_equal(ids, [[0, 1, 1, 2, 2], [3, 3, 4, 4, 0]])
    assert "match no class" in decode_grey_label(Image.fromarray(np.full((2, 2), 100, np.uint8)), 5)


def test_seed_layout_loads_every_pair_with_its_classes(tmp_path):
    root = make_seed_coco(tmp_path / "coco", num_classes=3, counts=(4, 2), size=32)
    data = load_multiclass("COCO", root, 3, 32)
    assert (len(data.train), len(data.val)) == (4, 2) and not data.problems
    rng = np.random.default_rng(0)  # the fixture's draws, in order
    expected = [draw(rng, 32, 3)[1] for _ in range(6)]
    np.testing.assert_array_equal(data.train.labels, np.stack(expected[:4]))
    np.testing.assert_array_equal(data.val.labels, np.stack(expected[4:]))
    assert data.train.images.shape == (4, 32, 32, 3) and data.train.images.dtype == np.uint8
    # resized on load: labels by nearest neighbour, so they stay class ids
    small = load_multiclass("COCO", root, 3, 16)
    assert small.train.labels.shape == (4, 16, 16)
    assert set(np.unique(small.train.labels)) <= {0, 1, 2}


def test_coco_stuff_keeps_unlabelled_pixels_and_rejects_ids_out_of_range(tmp_path, capsys):
    root = make_coco_stuff(tmp_path / "stuff", num_classes=4, counts=(3, 2), size=32)
    data = load_multiclass("COCOStuff", root, 4, 32)
    assert (data.train.labels[:, :3] == IGNORE_LABEL).all()
    assert set(np.unique(data.train.labels)) <= {0, 1, 2, 3, IGNORE_LABEL}
    assert data.class_pixels("train").sum() == (data.train.labels != IGNORE_LABEL).sum()
    bad = os.path.join(root, "annotations", "train2017", f"{0:012d}.png")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(bad)
    data = load_multiclass("COCOStuff", root, 4, 32, log=print)
    assert len(data.train) == 2 and [p.path for p in data.problems] == [bad]
    assert f"problem: {bad}: class id(s) [7]" in capsys.readouterr().out


def test_damaged_inputs_are_reported_by_path_and_skipped(tmp_path):
    root = make_seed_coco(tmp_path / "coco", num_classes=3, counts=(5, 2), size=32)
    corrupt = os.path.join(root, "train", "0.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"not a jpeg")
    off_level = os.path.join(root, "labels", "train", "1.png")
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(off_level)  # K = 3: 0, 127.5, 255
    orphan = os.path.join(root, "train", "extra.jpg")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(orphan)
    small = os.path.join(root, "labels", "train", "2.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small)
    data = load_multiclass("COCO", root, 3, 32)
    reasons = {p.path: p.reason for p in data.problems}
    assert set(reasons) == {corrupt, off_level, orphan, os.path.join(root, "train", "2.jpg")}
    assert "corrupt" in reasons[corrupt] and "match no class" in reasons[off_level]
    assert "without label" in reasons[orphan]
    assert data.train.stems == ("3", "4")
    with pytest.raises(ProblemsFound, match="4 problem"):
        load_multiclass("COCO", root, 3, 32, strict=True)


def test_layout_errors_name_the_folder_and_the_fix(tmp_path):
    root = make_coco_stuff(tmp_path / "stuff", counts=(1, 1))
    with pytest.raises(FileNotFoundError, match="--dataset COCOStuff"):
        load_multiclass("COCO", root, 4, 32)
    with pytest.raises(ValueError, match="--num_classes"):
        load_multiclass("COCOStuff", root, 300, 32)
