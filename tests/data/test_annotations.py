"""Mask formats in and out (data/annotations.py, data/label_studio_format.py): round trips
PNG -> COCO -> PNG (exact, checked by pycocotools' own COCO reader too), PNG -> YOLO-seg -> PNG
(holes come back filled, nothing else changes) and Label Studio brush RLE -> mask (exact), on
masks drawn here and on the real photos' masks; polygons read from COCO and from a Label Studio
export; malformed files refused, naming the file and the annotation."""
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from data.annotations import (as_mask, coco_dict, read_coco, read_yolo, write_coco, write_yolo,
                              yolo_label_path, yolo_mask, yolo_polygons)
from errors import UserError
from data.label_studio_format import (brush_mask, brush_result, label_studio_predictions,
                                      label_studio_tasks,
                                      polygon_mask, read_label_studio_export)
from data.masks import binarize_mask
from tests.fixtures.real_data import missing_reason, real_fewshot_dir


def drawn_masks() -> dict[str, np.ndarray]:
    """Masks with what breaks codecs: holes, several regions, the border, 1 pixel, nothing."""
    yy, xx = np.mgrid[:48, :64]
    ring = ((yy - 24) ** 2 + (xx - 20) ** 2 <= 15 ** 2) & ((yy - 24) ** 2 + (xx - 20) ** 2 > 6 ** 2)
    holes = ring.copy()
    holes[10:30, 40:60] = True
    holes[15:18, 45:48] = False  # a square with a small hole beside the ring
    regions = np.zeros((48, 64), bool)
    regions[2:6, 2:9], regions[20:40, 30:33], regions[40:47, 50:63] = True, True, True
    border = np.zeros((37, 53), bool)  # odd sizes; regions touch every side and a corner
    border[0:10, :], border[:, 0:4], border[30:, 40:] = True, True, True
    pixel = np.zeros((20, 30), bool)
    pixel[7, 11] = True
    pixel_and_line = pixel.copy()
    pixel_and_line[15, 3:20], pixel_and_line[0, 29] = True, True
    diagonal = np.eye(24, dtype=bool) | np.eye(24, k=3, dtype=bool)
    return {"holes.png": holes, "regions.png": regions, "border.png": border,
            "pixel.png": pixel, "pixel_and_line.png": pixel_and_line, "diagonal.png": diagonal,
            "empty.png": np.zeros((16, 16), bool), "full.png": np.ones((9, 12), bool)}


def real_masks(per_class: int = 3) -> dict[str, np.ndarray]:
    """The first masks of each class of the real photos, read by the project's mask rule."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    out = {}
    for folder in sorted(glob.glob(os.path.join(real_fewshot_dir(), "*", ""))):
        pngs = sorted(glob.glob(os.path.join(folder, "*.png")))[:per_class]
        for path in pngs:
            with Image.open(path) as im:
                out[os.path.relpath(path, real_fewshot_dir())] = binarize_mask(im)
    return out


@pytest.fixture(params=["drawn", "real"])
def masks(request):
    return drawn_masks() if request.param == "drawn" else real_masks()


def as_pngs(masks: dict, folder) -> dict[str, str]:
    """Write each mask as a 0/255 PNG; returns name -> path."""
    paths = {}
    for name, mask in masks.items():
        path = os.path.join(folder, name.replace(os.sep, "_"))
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        paths[name] = path
    return paths


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return binarize_mask(im)


def iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_png_coco_png_is_exact_and_pycocotools_reads_the_same(masks, tmp_path):
    pngs = as_pngs(masks, tmp_path)
    originals = {name: read_png(path) for name, path in pngs.items()}
    path = write_coco(str(tmp_path / "instances.json"), originals, "object")
    coco = COCO(path)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["object"]
    for image in coco.dataset["images"]:
        mask = originals[image["file_name"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == (1 if mask.any() else 0)
        for ann in anns:  # pycocotools' own reader gives back the mask, bit for bit
            np.testing.assert_array_equal(coco.annToMask(ann), mask)
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
    back = read_coco(path)
    assert [item.name for item in back] == list(originals)
    for item in back:
        out = tmp_path / f"back_{os.path.basename(item.name)}"
        Image.fromarray(item.mask * 255).save(out)
        np.testing.assert_array_equal(read_png(out), originals[item.name])


def test_png_yolo_png_keeps_every_region_and_fills_only_holes(masks, tmp_path):
    pngs = as_pngs(masks, tmp_path)
    originals = {name: read_png(path) for name, path in pngs.items()}
    labels = write_yolo(str(tmp_path / "yolo"), originals)
    assert labels == [yolo_label_path(str(tmp_path / "yolo"), name) for name in originals]
    sizes = {name: mask.shape for name, mask in originals.items()}
    ious = []
    for item in read_yolo(str(tmp_path / "yolo"), sizes):
        mask = originals[item.name]
        out = tmp_path / f"back_{os.path.basename(item.name)}"
        Image.fromarray(item.mask * 255).save(out)
        redrawn = read_png(out)
        filled = ndimage.binary_fill_holes(mask)
        assert iou(redrawn, filled) >= 0.95, item.name  # the documented limit, no other loss
        assert (redrawn >= mask).all(), item.name  # nothing of the object is lost
        ious.append(iou(redrawn, mask))
        with open(yolo_label_path(str(tmp_path / "yolo"), item.name)) as f:
            lines = f.read().splitlines()
        # one line per region (an island inside another region's hole is inside its polygon)
        n_regions = ndimage.label(filled, structure=np.ones((3, 3)))[1]
        assert len(lines) == n_regions and all(line.startswith("0 ") for line in lines)
    assert np.mean(ious) >= 0.95


def test_yolo_details_of_the_drawn_masks(tmp_path):
    drawn = {name: as_mask(mask, name) for name, mask in drawn_masks().items()}
    for name in ("regions.png", "border.png", "pixel.png", "pixel_and_line.png", "full.png",
                 "empty.png", "diagonal.png"):  # no holes: exactly the mask
        mask = drawn[name]
        np.testing.assert_array_equal(yolo_mask(yolo_polygons(mask), *mask.shape), mask, name)
    holes = drawn["holes.png"]
    redrawn = yolo_mask(yolo_polygons(holes), *holes.shape)
    np.testing.assert_array_equal(redrawn, ndimage.binary_fill_holes(holes))
    assert iou(redrawn, holes) < 0.95  # holes are a real loss: this is why the docs say so
    write_yolo(str(tmp_path), {"sub/empty.jpg": drawn["empty.png"]})
    assert open(tmp_path / "labels" / "sub" / "empty.txt").read() == ""  # a background image
    [item] = read_yolo(str(tmp_path), {"sub/missing.jpg": (5, 7)})
    assert item.mask.shape == (5, 7) and not item.mask.any()  # no label file: background too


def test_label_studio_brush_round_trip_is_exact(masks):
    for name, mask in masks.items():
        mask = as_mask(mask, name)
        result = brush_result(mask, "object", from_name="tag", to_name="image")
        assert (result["original_height"], result["original_width"]) == mask.shape
        assert result["value"]["brushlabels"] == ["object"]
        json.dumps(result)  # plain JSON, as Label Studio stores it
        np.testing.assert_array_equal(brush_mask(result), mask, name)


def test_coco_polygons_and_uncompressed_rle_read_as_pycocotools_draws_them(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "height": 30, "width": 40},
                       {"id": 8, "file_name": "b.jpg", "height": 20, "width": 10}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
                 "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10], [20, 20, 30, 20, 25, 28]]},
                {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1,
                 "segmentation": {"size": [30, 40], "counts": [35, 4, 26, 4] + [1131]}},
                {"id": 3, "image_id": 7, "category_id": 2, "iscrowd": 0,
                 "segmentation": [[30, 0, 40, 0, 40, 5, 30, 5]]}]}
    path = tmp_path / "poly.json"
    path.write_text(json.dumps(coco))
    reference = COCO(str(path))
    expected = np.zeros((30, 40), np.uint8)
    for ann in reference.loadAnns(reference.getAnnIds(imgIds=7, catIds=[1])):
        expected |= reference.annToMask(ann)
    a, b = read_coco(str(path), category="cat")
    assert (a.name, b.name) == ("a.jpg", "b.jpg")
    np.testing.assert_array_equal(a.mask, expected)
    assert a.mask[2:10, 2:12].all() and a.mask[5:9, 1].all() and a.mask.sum() > 100
    assert b.mask.shape == (20, 10) and not b.mask.any()  # no annotation: background
    dog, _ = read_coco(str(path), category="dog")
    assert dog.mask[0:5, 30:40].all() and dog.mask.sum() == 50
    with pytest.raises(UserError, match=r"poly.json.*2 categories \(cat, dog\).*category="):
        read_coco(str(path))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("annotations"), r"needs 'images' and 'annotations'"),
    (lambda c: c["annotations"][0].update(image_id=99), r"annotation 1.*image_id names no image"),
    (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]),
     r"annotation 1.*at least 3 points"),
    (lambda c: c["annotations"][0].update(segmentation={"size": [9, 9], "counts": "ab"}),
     r"annotation 1.*RLE size is \[9, 9\].*30x40"),
    (lambda c: c["annotations"][0].update(segmentation={"size": [30, 40], "counts": [5, 5]}),
     r"annotation 1.*adding up to 1200"),
])
def test_malformed_coco_files_name_the_file_and_the_annotation(tmp_path, change, message):
    coco = coco_dict({"a.jpg": np.pad(np.ones((10, 10)), ((0, 20), (0, 30)))}, "cat")
    change(coco)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(UserError, match=r"bad\.json.*" + message):
        read_coco(str(path))
    path.write_text("{not json")
    with pytest.raises(UserError, match=r"bad\.json.*not valid JSON"):
        read_coco(str(path))


def test_an_unknown_category_and_an_unnamed_one_are_refused(tmp_path):
    path = write_coco(str(tmp_path / "good.json"), {"a.jpg": np.ones((4, 4))}, "cat")
    with pytest.raises(UserError, match=r"good\.json' has no category 'dog'; it has cat"):
        read_coco(path, category="dog")
    with pytest.raises(UserError, match=r"category needs a name"):
        coco_dict({"a.jpg": np.ones((4, 4))}, " ")


def test_malformed_yolo_lines_name_the_file_and_the_line(tmp_path):
    path = yolo_label_path(str(tmp_path), "a.jpg")
    os.makedirs(os.path.dirname(path))
    for line, message in [("0 0.1 0.2 0.3", r"line 2: a segment needs at least 3"),
                          ("0 0.5 0.5 0.2 0.3", r"line 2: .*detection box line"),
                          ("0 0.1 0.1 1.5 0.2 0.3 0.3", r"line 2: .*each in \[0, 1\]"),
                          ("zero 0.1 0.1 0.2 0.2 0.3 0.3", r"line 2: .*'<class> x1 y1")]:
        with open(path, "w") as f:
            f.write("0 0.1 0.1 0.9 0.1 0.5 0.9\n" + line + "\n")
        with pytest.raises(UserError, match=r"a\.txt.*" + message):
            read_yolo(str(tmp_path), {"a.jpg": (10, 10)})
    with open(path, "w") as f:  # another class's lines are not ours
        f.write("1 0.1 0.1 0.9 0.1 0.5 0.9\n")
    assert not read_yolo(str(tmp_path), {"a.jpg": (10, 10)})[0].mask.any()
    with pytest.raises(UserError, match=r"No labels/ folder in .*nowhere"):
        read_yolo(str(tmp_path / "nowhere"), {"a.jpg": (10, 10)})
    with pytest.raises(UserError, match=r"relative to the images folder"):
        write_yolo(str(tmp_path), {"../a.jpg": np.ones((3, 3))})


def ls_export(rect_mask) -> list:
    """A Label Studio JSON export as 1.23 writes it: a brush task, a polygon task, a task with
    a skipped and an older annotation, an unlabelled task, and a region of another label."""
    brush = brush_result(rect_mask, "camel", from_name="tag", to_name="image")
    polygon = {"type": "polygonlabels", "from_name": "tag", "to_name": "image",
               "original_width": 40, "original_height": 20, "image_rotation": 0,
               # percent of the size: x 10..50 % of 40 px = 4..20, y 25..75 % of 20 px = 5..15
               "value": {"points": [[10, 25], [50, 25], [50, 75], [10, 75]], "closed": True,
                         "polygonlabels": ["camel"]}}
    other = dict(polygon, value=dict(polygon["value"], polygonlabels=["dog"],
                                     points=[[0, 0], [5, 0], [5, 5]]))
    return [
        {"id": 1, "data": {"image": "/data/upload/1/a.jpg"},
         "annotations": [{"id": 11, "was_cancelled": False, "result": [brush]}]},
        {"id": 2, "data": {"image": "https://example.org/b.jpg"},
         "annotations": [{"id": 12, "result": [polygon, other]}]},
        {"id": 3, "data": {"image": "/data/upload/1/c.jpg"},
         "annotations": [{"id": 13, "result": [polygon]},
                         {"id": 14, "result": [brush, polygon]},
                         {"id": 15, "was_cancelled": True, "result": []}]},
        {"id": 4, "data": {"image": "/data/upload/1/d.jpg"}, "annotations": []},
    ]


def test_label_studio_export_brush_and_polygons(tmp_path):
    rect = np.zeros((20, 40), np.uint8)
    rect[2:9, 30:38] = 1
    path = tmp_path / "export.json"
    path.write_text(json.dumps(ls_export(rect)))
    tasks = read_label_studio_export(str(path), label="camel")
    assert [(t.task_id, t.image) for t in tasks] == [
        (1, "/data/upload/1/a.jpg"), (2, "https://example.org/b.jpg"), (3, "/data/upload/1/c.jpg")]
    polygon = np.zeros((20, 40), np.uint8)
    polygon[5:15, 4:20] = 1  # pixel i spans [i, i + 1): the polygon covers exactly these
    np.testing.assert_array_equal(tasks[0].mask(), rect)
    np.testing.assert_array_equal(tasks[1].mask(20, 40), polygon)
    np.testing.assert_array_equal(tasks[2].mask(), rect | polygon)  # newest kept, skipped not
    with pytest.raises(UserError, match=r"export\.json.*2 labels \(camel, dog\).*label=NAME"):
        read_label_studio_export(str(path))
    with pytest.raises(UserError, match=r"task 1, annotation 11: .*drawn on a 40x20 image but "
                                        r"the image is 41x20"):
        tasks[0].mask(20, 41)
    [empty] = label_studio_tasks([{"id": 5, "data": {"img": "x.png"},
                                   "annotations": [{"id": 1, "result": []}]}])
    assert empty.image == "x.png" and empty.mask(3, 4).shape == (3, 4)
    with pytest.raises(UserError, match=r"task 5, annotation 1: .*no region.*height and width"):
        empty.mask()


@pytest.mark.parametrize("export, message", [
    ({"image": "a.jpg"}, r"not a list of tasks"),
    ([{"id": 3, "image": "a.jpg", "tag": []}], r"task 3 is not a task with 'data'.*JSON-MIN"),
    ([{"id": 3, "data": {"a": "1.jpg", "b": "2.jpg"}, "annotations": [{"id": 1, "result": []}]}],
     r"task 3: cannot tell which .*data_key"),
    ([{"id": 3, "data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": {}}]}],
     r"task 3, annotation 1: 'result' must be a list"),
])
def test_malformed_label_studio_exports_name_the_task(tmp_path, export, message):
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(export))
    with pytest.raises(UserError, match=r"ls\.json.*" + message):
        read_label_studio_export(str(path))


def test_malformed_label_studio_regions_name_the_region():
    brush = brush_result(np.ones((4, 5)), "x", from_name="tag", to_name="image")
    bad_size = dict(brush, original_width=6)
    bad_rle = dict(brush, value=dict(brush["value"], rle=[255, 0, 3]))
    bad_polygon = {"type": "polygonlabels", "original_width": 5, "original_height": 4,
                   "value": {"points": [[1, 1], [2, 2]], "polygonlabels": ["x"]}}
    for region, message in [(bad_size, r"brush RLE holds 80 values but a 6x4 RGBA image has 96"),
                            (bad_rle, r"holds|cannot be decoded"),
                            (bad_polygon, r"at least 3 \[x, y\] pairs"),
                            (dict(brush, value={"format": "png"}), r"value.format 'rle'")]:
        [task] = label_studio_tasks([{"id": 9, "data": {"image": "a.jpg"},
                                      "annotations": [{"id": 2, "result": [region]}]}])
        with pytest.raises(UserError, match=r"task 9, annotation 2, region 0: .*" + message):
            task.mask()
    assert polygon_mask(dict(bad_polygon, value={"points": [[0, 0], [100, 0], [100, 100]]})).any()
    with pytest.raises(UserError, match=r"shape \(2, 2, 2\).*2-D"):
        brush_result(np.ones((2, 2, 2)), "x", from_name="tag", to_name="image")


def test_label_studio_pre_labels_decode_to_the_masks(tmp_path):
    drawn = {f"sub/{name[:-4]}.jpg": as_mask(m, name) for name, m in drawn_masks().items()}
    tasks = label_studio_predictions(drawn, "camel")
    assert [t["data"]["image"] for t in tasks] == list(drawn)
    for task in tasks:
        mask = drawn[task["data"]["image"]]
        [prediction] = task["predictions"]
        regions = prediction["result"]
        assert len(regions) == (1 if mask.any() else 0)
        if regions:
            assert regions[0]["value"]["brushlabels"] == ["camel"]
            np.testing.assert_array_equal(brush_mask(regions[0]), mask)
