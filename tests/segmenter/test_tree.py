"""Segmenting a folder tree (segmenter.tree, segmenter.outputs) with a stand-in model (red pixels
are the object): every format equals the masks, a rerun resumes and leaves what is done
untouched, files metaseg did not write are never deleted or overwritten, bad files are named and
skipped, and the reader stays a bounded number of images ahead of the model."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from data.annotations import read_yolo_polygons, yolo_mask
from data.label_studio_format import brush_mask
from errors import UserError
from segmenter import outputs, tree
from segmenter.keys import key_of

SIZE = 32
PARTS = {"init": "i", "examples": "e", "settings": "s", "category": "square"}
KEY = key_of(PARTS)


def _predict(images):
    """A stand-in model: the foreground probability is the red channel's excess over green."""
    return np.clip((images[..., 0].astype(np.float32) - images[..., 1]) / 100.0, 0, 1)


def _photo(path, width, height, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (height, width, 3), np.uint8)
    y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[y:y + height // 3, x:x + width // 4] = (230, 30, 30)
    image[y + 1:y + 3, x + 1:x + 3] = (90, 90, 90)  # a hole
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    for i, rel in enumerate(["a.jpg", "a.png", "b.png", "sub/c.png", "sub/deep/фото.png",
                             "sub/d.png", "e.png"]):
        _photo(root / rel, 40 + 3 * i, 30 + 2 * i, i)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (8000, 7000)).save(root / "huge.png")  # 56 megapixels, a few KB on disk
    return root


def _run(photos, out, formats=("png",), **kwargs):
    return tree.predict_tree(_predict, SIZE, str(photos), str(out), formats=formats, key=KEY,
                             parts=PARTS, batch_size=3, **kwargs)


def _mask(path):
    with Image.open(path) as im:
        return np.asarray(im) > 0


def test_every_format_equals_the_masks_and_bad_files_are_named(photos, tmp_path):
    out = tmp_path / "masks"
    result = _run(photos, out, formats=outputs.FORMATS)
    assert result["images"] == 9 and result["segmented"] == 7
    assert [rel for rel, _ in result["skipped"]] == ["broken.jpg", "huge.png"]
    assert "cannot be read" in result["skipped"][0][1]
    assert "8000x7000 pixels, over the limit of 50 megapixels" in result["skipped"][1][1]
    assert result["shared_stems"][0].startswith("a: a.jpg, a.png share a stem")
    coco = COCO(str(out / outputs.COCO_FILE))
    by_name = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
    tasks = {t["data"]["image"]: t for t in json.load(open(out / outputs.LABEL_STUDIO_FILE))}
    for rel, stem in (("a.jpg", "a_jpg"), ("a.png", "a_png"), ("sub/deep/фото.png", "фото")):
        folder = os.path.dirname(rel)
        png = _mask(out / folder / f"{stem}_mask.png")
        with Image.open(photos / rel) as im:
            assert im.size[::-1] == png.shape  # the image's own size
        assert (out / folder / f"{stem}_overlay.png").exists()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[by_name[rel]]))
        np.testing.assert_array_equal(coco.annToMask(anns[0]) > 0, png)  # COCO: exact
        yolo = yolo_mask(read_yolo_polygons(str(out / "labels" / folder / f"{stem}.txt")),
                         *png.shape) > 0
        assert (yolo & png).sum() / (yolo | png).sum() >= 0.95  # YOLO: holes come back filled
        brush = tasks[rel]["predictions"][0]["result"][0]
        np.testing.assert_array_equal(brush_mask(brush) > 0, png)  # Label Studio: exact
    assert tree.read_state(str(out))["key"] == KEY


def test_a_rerun_resumes_and_leaves_what_is_done_untouched(photos, tmp_path, capsys):
    out = tmp_path / "masks"
    _run(photos, out)
    done = {p: os.stat(out / p) for p in ("a_jpg_mask.png", "b_mask.png", "sub/c_mask.png")}
    # As if killed after sub/d.png's mask but before its record: the pending batch names it.
    os.remove(outputs.record_path(str(out), "sub/d.png"))
    with open(out / outputs.STATE_DIR / tree.PENDING, "w") as f:
        json.dump({"files": ["sub/d_mask.png"]}, f)
    os.remove(out / "e_mask.png")  # a file of a done image gone: that image is done again
    (out / "notes.txt").write_text("mine")
    seen = []
    result = _run(photos, out, on_image=lambda d, t, s: seen.append(d))
    assert result["done_before"] == 5 and result["segmented"] == 2 and seen[-1] == 9
    for path, before in done.items():
        after = os.stat(out / path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    assert (out / "notes.txt").read_text() == "mine" and (out / "e_mask.png").exists()


def test_other_weights_are_refused_and_restart_keeps_what_is_not_metasegs(photos, tmp_path):
    out = tmp_path / "masks"
    _run(photos, out)
    (out / "notes.txt").write_text("mine")
    edited = out / "b_mask.png"
    Image.fromarray(np.zeros((34, 46), np.uint8)).save(edited)  # a hand-corrected mask
    other = {**PARTS, "settings": "other"}
    with pytest.raises(UserError, match=r"holds masks of other settings than this run's; pass "
                                        r"--restart"):
        tree.check_masks_folder(str(photos), str(out), formats=("png",), key=key_of(other),
                                parts=other, flag="--masks_dir")
    with pytest.raises(UserError, match=r"b_mask\.png is in the way and metaseg did not write"):
        tree.predict_tree(_predict, SIZE, str(photos), str(out), formats=("png",),
                          key=key_of(other), parts=other, restart=True, flag="--masks_dir")
    assert (out / "notes.txt").read_text() == "mine" and edited.exists()  # never deleted
    assert not (out / "a_jpg_mask.png").exists()  # what metaseg wrote went
    os.remove(edited)  # the user moves it away: the restart goes through
    result = tree.predict_tree(_predict, SIZE, str(photos), str(out), formats=("png",),
                               key=key_of(other), parts=other, restart=True)
    assert result["segmented"] == 7 and tree.read_state(str(out))["key"] == key_of(other)


def test_a_file_in_the_way_is_refused_before_anything_is_written(photos, tmp_path):
    out = tmp_path / "masks"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "c_mask.png").write_bytes(b"someone else's")
    with pytest.raises(UserError, match=r"c_mask\.png is in the way .*Nothing was written"):
        _run(photos, out)
    assert sorted(os.listdir(out)) == ["sub"]


def test_the_reader_stays_a_bounded_number_of_images_ahead(photos, tmp_path, monkeypatch):
    for i in range(40):
        _photo(photos / "many" / f"{i}.png", 20, 20, i)
    read, ahead = [], []
    real_read = tree._read

    def counting(*args):
        result = real_read(*args)
        read.append(not isinstance(result, str))  # skipped images never reach the model
        return result

    def slow_predict(images):
        ahead.append(sum(read) - sum(seen))
        seen.append(len(images))
        return _predict(images)

    seen = []
    monkeypatch.setattr(tree, "_read", counting)
    tree.predict_tree(slow_predict, SIZE, str(photos), str(tmp_path / "m"), formats=("png",),
                      key=KEY, parts=PARTS, batch_size=3)
    assert len(read) == 49 and max(ahead) <= (tree.PREFETCH_BATCHES + 2) * 3


def test_a_one_pixel_photo_is_segmented_at_its_size_and_a_bad_one_named_by_its_path(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "wide.png", 40, 30, 0)
    (photos / "dot").mkdir()
    Image.new("RGB", (1, 1), (230, 30, 30)).save(photos / "dot" / "one pixel.png")
    (photos / "dot" / "empty.jpg").write_bytes(b"")
    result = _run(photos, tmp_path / "m")
    assert result["segmented"] == 2 and [r for r, _ in result["skipped"]] == [
        os.path.join("dot", "empty.jpg")]
    dot = _mask(tmp_path / "m" / "dot" / "one pixel_mask.png")
    assert dot.shape == (1, 1) and dot.all()  # the red pixel is the object
