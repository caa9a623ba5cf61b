"""A task folder's examples (PNG masks, or a COCO file, a Label Studio export or YOLO-seg labels
beside the images) and the images of a tree to segment: sizes, pairing, names, and every
rejected input names its file."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data.annotations import coco_dict, write_yolo
from data.label_studio_format import brush_result
from errors import UserError
from segmenter.folder import load_user_task
from segmenter.tree import list_images


def _image(path, width, height, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(path)


def _mask(width, height):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 2, width // 4: width // 2] = 1
    return mask


def _write_pair(folder, stem, width, height, seed, mask_size=None):
    _image(os.path.join(folder, f"{stem}.jpg"), width, height, seed)
    Image.fromarray(_mask(*(mask_size or (width, height))) * 255).save(
        os.path.join(folder, f"{stem}.png"))


@pytest.fixture()
def task_dir(tmp_path):
    support = tmp_path / "support"
    support.mkdir()
    _write_pair(str(support), "1", 90, 60, 0)
    _write_pair(str(support), "2", 40, 70, 1)
    (support / "notes.txt").write_text("ignored")
    return tmp_path


def test_png_pairs_at_any_size(task_dir):
    task = load_user_task(str(task_dir))
    # Every image at its own size: the model's side is the adapter's business.
    assert [i.shape for i in task.support_images] == [(60, 90, 3), (70, 40, 3)]
    assert [m.shape for m in task.support_masks] == [(60, 90), (70, 40)]
    assert all(set(np.unique(m)) == {0, 1} for m in task.support_masks)
    assert task.source.startswith("PNG masks in") and task.name == os.path.basename(task_dir)


@pytest.mark.parametrize("form", ["coco", "label_studio", "yolo"])
def test_examples_from_an_annotation_file_equal_the_png_masks(task_dir, form):
    support = task_dir / "support"
    masks = {name: _mask(w, h) for name, (w, h) in (("1.jpg", (90, 60)), ("2.jpg", (40, 70)))}
    for name in masks:
        os.remove(support / name.replace(".jpg", ".png"))
    if form == "coco":
        (support / "instances.json").write_text(json.dumps(coco_dict(masks, "square")))
    elif form == "label_studio":  # uploads are named <8 hex>-<name> by Label Studio
        tasks = [{"id": i, "data": {"image": f"/data/upload/1/ab12cd34-{name}"},
                  "annotations": [{"result": [brush_result(m, "square", from_name="tag",
                                                           to_name="image")]}]}
                 for i, (name, m) in enumerate(masks.items(), 1)]
        (support / "export.json").write_text(json.dumps(tasks))
    else:
        write_yolo(str(support), masks)
    task = load_user_task(str(task_dir))
    assert [os.path.basename(p) for p in task.support_paths] == ["1.jpg", "2.jpg"]
    for got, want in zip(task.support_masks, masks.values()):
        np.testing.assert_array_equal(got, want)  # rectangles: YOLO's polygons are exact too
    assert form.split("_")[0].lower() in task.source.lower().replace(" ", "_")


def test_an_annotation_naming_a_missing_image_or_another_size_is_named(task_dir):
    support = task_dir / "support"
    (support / "instances.json").write_text(json.dumps(coco_dict({"3.jpg": _mask(9, 9)}, "x")))
    with pytest.raises(UserError, match=r"names the image '3\.jpg', which is not in"):
        load_user_task(str(task_dir))
    (support / "instances.json").write_text(json.dumps(coco_dict({"1.jpg": _mask(9, 9)}, "x")))
    with pytest.raises(UserError, match=r"mask of .*1\.jpg' is 9x9 but the image is 90x60"):
        load_user_task(str(task_dir))
    (support / "second.json").write_text("[]")
    with pytest.raises(UserError, match="holds 2 annotation files"):
        load_user_task(str(task_dir))


def test_missing_mask_orphan_mask_size_and_subfolders_are_named(task_dir):
    support = task_dir / "support"
    os.remove(support / "2.png")
    with pytest.raises(UserError, match=r"2\.jpg' has no mask"):
        load_user_task(str(task_dir))
    _write_pair(str(support), "2", 40, 70, 1)
    os.remove(support / "2.jpg")
    with pytest.raises(UserError, match=r"2\.png' has no image"):
        load_user_task(str(task_dir))
    _write_pair(str(support), "2", 64, 64, 3, mask_size=(32, 64))
    with pytest.raises(UserError, match=r"2\.png' is 32x64 but its image .*2\.jpg' is 64x64"):
        load_user_task(str(task_dir))
    _write_pair(str(support), "2", 40, 70, 1)
    (support / "more").mkdir()  # nested examples are named, not skipped
    with pytest.raises(UserError, match=r"more' is a folder: the examples are the files"):
        load_user_task(str(task_dir))
    shutil.rmtree(support / "more")
    (support / "broken.jpg").write_bytes(b"not a jpeg")
    (support / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"Cannot read image .*broken\.jpg"):
        load_user_task(str(task_dir))


def test_missing_parts(tmp_path):
    (tmp_path / "support").mkdir()
    with pytest.raises(UserError, match="No examples"):
        load_user_task(str(tmp_path))
    os.rmdir(tmp_path / "support")
    os.symlink(tmp_path / "support", tmp_path / "support")  # a loop
    with pytest.raises(UserError, match=r"support' is a symbolic link .*leads nowhere"):
        load_user_task(str(tmp_path))
    with pytest.raises(UserError, match="not a directory"):
        load_user_task(str(tmp_path / "nope"))


def test_the_tree_lists_every_image_at_any_depth_each_with_its_own_output(tmp_path):
    tree = tmp_path / "photos"
    for rel in ("9.jpg", "10.JPG", "a.jpg", "a.png", "sub/deeper/фото.jpeg", "sub/b.webp",
                ".hidden.jpg", ".cache/c.jpg", "notes.txt", "masks/old.png"):
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            _image(str(path), 8, 8, 0)
    sources, shared = list_images(str(tree), exclude=(str(tree / "masks"),))
    assert [s.rel for s in sources] == ["9.jpg", "10.JPG", "a.jpg", "a.png", "sub/b.webp",
                                        "sub/deeper/фото.jpeg"]
    assert [s.stem for s in sources] == ["9", "10", "a_jpg", "a_png", "b", "фото"]
    assert shared == ["a: a.jpg, a.png share a stem; their outputs are named a_jpg, a_png"]
    with pytest.raises(UserError, match="is not a folder"):
        list_images(str(tree / "nope"))
