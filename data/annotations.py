"""Masks in and out of the formats labelling tools read and write: COCO instances JSON (RLE or
polygons) and YOLO-seg label files; Label Studio's brush RLE and exports are in
`data.label_studio_format`.

Every function works on one object class and on uint8 {0, 1} masks (H, W) (0/255 and bool masks
are read by the project's one mask rule, `data.masks.binarize_values`), each at its image's own
size. No codec is written here: pycocotools encodes and decodes COCO RLE and rasterises COCO
polygons, and OpenCV traces and fills YOLO-seg polygons, chosen over scikit-image because its
`findContours`/`fillPoly` pair works on whole pixels, as Ultralytics' own mask-to-polygon
converter does, where scikit-image's marching squares draws sub-pixel outlines half a pixel
inside each region (a 1-pixel region has none).

    coco = coco_dict({"a.jpg": mask_a, "b.jpg": mask_b}, category="camel")
    write_coco("instances.json", {...}, "camel"); read_coco("instances.json")
    write_yolo("dataset", {"a.jpg": mask_a}); read_yolo("dataset", {"a.jpg": (h, w)})
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from errors import UserError
from data.masks import binarize_values

YOLO_DECIMALS = 6  # normalised coordinates; recovers pixel positions exactly up to 10^6 px


@dataclass(frozen=True)
class LabelledImage:
    """One image's name, as the annotation file gives it, and its uint8 {0, 1} mask (H, W)."""

    name: str
    mask: np.ndarray


def as_mask(mask, what: str) -> np.ndarray:
    """A mask checked and made uint8 {0, 1} (H, W) by the project's mask rule.

    Args:
        mask: a 2-D array: {0, 1}, 0/255, bool or grey values.
        what: how to name it in an error (e.g. "the mask of 'a.jpg'").

    Returns:
        uint8 (H, W) in {0, 1}.

    Raises:
        UserError: not a 2-D array of at least 1 x 1 pixels.
    """
    array = np.asarray(mask)
    if array.ndim != 2 or min(array.shape) < 1 or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UserError(f"{what} has shape {array.shape} and dtype {array.dtype}; pass one 2-D "
                        f"numeric mask (H, W) per image, 1 for the object and 0 elsewhere.")
    return binarize_values(array.astype(np.float32))


# ---------------------------------------------------------------------------------------- COCO

def coco_annotation(mask: np.ndarray, image_id: int, annotation_id: int,
                    category_id: int = 1) -> dict | None:
    """One COCO annotation holding a whole mask as compressed RLE.

    Args:
        mask: uint8 {0, 1} (H, W).
        image_id, annotation_id, category_id: its ids in the instances file.

    Returns:
        the annotation dict, or None for an empty mask (COCO has no empty annotation).
    """
    if not mask.any():
        return None
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "segmentation": {"size": [int(s) for s in rle["size"]],
                             "counts": rle["counts"].decode("ascii")},
            "area": int(coco_mask.area(rle)),
            "bbox": [float(v) for v in coco_mask.toBbox(rle)],
            # 0: an object, not a crowd region; trainers (Detectron2, MMDetection) ignore
            # iscrowd=1 annotations, whatever their segmentation's type.
            "iscrowd": 0}


def coco_dict(masks: Mapping[str, np.ndarray], category: str) -> dict:
    """A COCO instances dict: one image entry per mask, one RLE annotation per non-empty mask.

    Args:
        masks: image file name -> its mask, in the order to write.
        category: the object's name (the one category, id 1).

    Returns:
        {"images", "annotations", "categories"}; an image with an empty mask has no annotation.

    Raises:
        UserError: an empty category name or a mask that is not 2-D.
    """
    if not str(category).strip():
        raise UserError("The COCO category needs a name (the task's object, e.g. 'camel').")
    images, annotations = [], []
    for image_id, (name, mask) in enumerate(masks.items(), 1):
        mask = as_mask(mask, f"the mask of {name!r}")
        images.append({"id": image_id, "file_name": name,
                       "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        annotation = coco_annotation(mask, image_id, len(annotations) + 1)
        if annotation is not None:
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": coco_categories(category)}


def coco_categories(category: str) -> list[dict]:
    """COCO's categories of a file of one object: id 1, named after it."""
    return [{"id": 1, "name": str(category), "supercategory": "object"}]


def write_coco(path: str, masks: Mapping[str, np.ndarray], category: str) -> str:
    """Write one COCO instances JSON for many images (whole, or not at all).

    Args:
        path: the .json file to write.
        masks: image file name -> its mask.
        category: the object's name.

    Returns:
        path.
    """
    text = json.dumps(coco_dict(masks, category))
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)  # a reader never sees half a file
    return path


def _load_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"Cannot read {what} {path!r}: {e.strerror}.") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path!r} is not valid JSON ({e}); export it again.") from e


def _coco_segmentation_rle(segmentation, height: int, width: int, where: str) -> dict:
    """Any COCO segmentation (compressed or uncompressed RLE, polygons) as compressed RLE."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if list(size or []) != [height, width]:
            raise UserError(f"{where}: its RLE size is {size} but the image is {height}x{width} "
                            f"(height x width); write the RLE at the image's size.")
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or \
                    sum(counts) != height * width:
                raise UserError(f"{where}: its uncompressed RLE counts must be non-negative "
                                f"integers adding up to {height * width} pixels; export it again.")
            return coco_mask.frPyObjects(segmentation, height, width)
        if isinstance(counts, str) and counts:
            return {"size": [height, width], "counts": counts.encode("ascii")}
        raise UserError(f"{where}: its RLE 'counts' is neither a string nor a list; export it "
                        f"again.")
    if isinstance(segmentation, list) and segmentation:
        polygons = [[float(v) for v in p] for p in segmentation
                    if isinstance(p, list) and all(isinstance(v, (int, float)) for v in p)]
        if len(polygons) != len(segmentation) or any(
                len(p) < 6 or len(p) % 2 for p in polygons):
            raise UserError(f"{where}: each polygon must be a list of x, y numbers (at least 3 "
                            f"points); export it again.")
        return coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    raise UserError(f"{where}: 'segmentation' must be RLE ({{'size', 'counts'}}) or a list of "
                    f"polygons; export it again.")


def _coco_category_ids(coco: dict, category: str | None, path: str) -> set | None:
    """The category ids to read: the named one, or None (all) when the file has at most one."""
    categories = coco.get("categories") or []
    names = {c.get("name"): c.get("id") for c in categories if isinstance(c, dict)}
    if category is None:
        if len(names) > 1:
            raise UserError(f"COCO file {path!r} holds {len(names)} categories "
                            f"({', '.join(sorted(map(str, names)))}); choose one "
                            f"(category=NAME).")
        return None
    if category not in names:
        raise UserError(f"COCO file {path!r} has no category {category!r}; it has "
                        f"{', '.join(sorted(map(str, names))) or 'none'}.")
    return {names[category]}


def read_coco(path: str, category: str | None = None) -> list[LabelledImage]:
    """Every image of a COCO instances JSON with the union of its annotations as one mask.

    Args:
        path: the instances .json (segmentations as compressed or uncompressed RLE, or polygons).
        category: the category's name; None reads every annotation of a file with one category.

    Returns:
        one LabelledImage per image entry, in the file's order (an empty mask where the image
        has no annotation of the category).

    Raises:
        UserError: unreadable JSON, missing keys, an unknown category or image id, or a
            malformed segmentation; the message names the file and the annotation.
    """
    coco = _load_json(path, "COCO file")
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or \
            not isinstance(coco.get("annotations"), list):
        raise UserError(f"COCO file {path!r} needs 'images' and 'annotations' lists (an "
                        f"instances file); export it again.")
    wanted = _coco_category_ids(coco, category, path)
    masks, names = {}, {}
    for i, image in enumerate(coco["images"]):
        try:
            image_id, height, width = image["id"], int(image["height"]), int(image["width"])
            names[image_id] = str(image["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"COCO file {path!r}: image entry {i} needs 'id', 'file_name', "
                            f"'height' and 'width' ({e!r} missing or bad).") from e
        masks[image_id] = np.zeros((height, width), np.uint8)
    for i, annotation in enumerate(coco["annotations"]):
        where = f"COCO file {path!r}, annotation {annotation.get('id', i)!r}" \
            if isinstance(annotation, dict) else f"COCO file {path!r}, annotation {i}"
        if not isinstance(annotation, dict) or annotation.get("image_id") not in masks:
            raise UserError(f"{where}: its image_id names no image entry; export it again.")
        if wanted is not None and annotation.get("category_id") not in wanted:
            continue
        mask = masks[annotation["image_id"]]
        rle = _coco_segmentation_rle(annotation.get("segmentation"), *mask.shape, where)
        try:
            mask |= coco_mask.decode(rle).astype(np.uint8)
        except (ValueError, TypeError) as e:
            raise UserError(f"{where}: its RLE cannot be decoded ({e}); export it again.") from e
    return [LabelledImage(names[image_id], mask) for image_id, mask in masks.items()]


# ------------------------------------------------------------------------------------ YOLO-seg

def yolo_label_path(root: str, image_name: str) -> str:
    """Where YOLO-seg keeps an image's labels: <root>/labels/<relative stem>.txt.

    Args:
        root: the dataset folder.
        image_name: the image's path relative to the images folder (e.g. "train/a.jpg").

    Returns:
        the label file's path.
    """
    stem = os.path.splitext(os.path.normpath(image_name))[0]
    if os.path.isabs(image_name) or stem.split(os.sep)[0] == os.pardir:
        raise UserError(f"Image name {image_name!r} must be a path relative to the images "
                        f"folder (e.g. 'train/a.jpg').")
    return os.path.join(root, "labels", stem + ".txt")


def yolo_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The outer contour of every connected region, normalised by the image's size.

    Holes are not kept: YOLO-seg has one polygon per object and no way to cut one out, so a
    region's holes come back filled when its polygon is drawn (`yolo_mask`).

    Args:
        mask: uint8 {0, 1} (H, W).

    Returns:
        per region a float (N, 2) array of (x, y) in [0, 1], N >= 3 (a 1- or 2-pixel region
        repeats its points: YOLO-seg needs 3).
    """
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)
        while len(points) < 3:
            points = np.concatenate([points, points])[:3]
        polygons.append(points / [width, height])
    return polygons


def yolo_mask(polygons, height: int, width: int) -> np.ndarray:
    """Draw normalised polygons at an image's size (each filled, holes included).

    Args:
        polygons: per region an (N, 2) array of (x, y) in [0, 1].
        height, width: the image's size.

    Returns:
        uint8 {0, 1} (height, width).
    """
    mask = np.zeros((height, width), np.uint8)
    for polygon in polygons:
        points = np.rint(np.asarray(polygon, np.float64) * [width, height]).astype(np.int32)
        points = np.clip(points, 0, [width - 1, height - 1])
        cv2.fillPoly(mask, [points], 1)  # one call each: overlapping polygons stay filled
    return mask


def write_yolo(root: str, masks: Mapping[str, np.ndarray], class_id: int = 0) -> list[str]:
    """Write one YOLO-seg label file per image: a line "<class> x1 y1 x2 y2 ..." per region.

    Holes are lost (`yolo_polygons`); an empty mask gives an empty file (a background image).

    Args:
        root: the dataset folder; files go to <root>/labels/<relative stem>.txt.
        masks: image path relative to the images folder -> its mask.
        class_id: the object's class number.

    Returns:
        the label files written, in the order of `masks`.
    """
    paths = []
    for name, mask in masks.items():
        text = yolo_text(as_mask(mask, f"the mask of {name!r}"), class_id)
        path = yolo_label_path(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths


def yolo_text(mask: np.ndarray, class_id: int = 0) -> str:
    """A mask's YOLO-seg label file: a line "<class> x1 y1 x2 y2 ..." per region (holes lost)."""
    return "".join(" ".join([str(class_id)] + [f"{v:.{YOLO_DECIMALS}f}" for v in polygon.ravel()])
                   + "\n" for polygon in yolo_polygons(mask))


def read_yolo_polygons(path: str, class_id: int = 0) -> list[np.ndarray]:
    """The polygons of one class in a YOLO-seg label file (other classes' lines are skipped).

    Args:
        path: the label .txt file.
        class_id: the class to read.

    Returns:
        per line of that class an (N, 2) array of normalised (x, y).

    Raises:
        UserError: a line that is not "<class> x1 y1 x2 y2 x3 y3 ..." with coordinates in
            [0, 1]; the message names the file and the line.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UserError(f"Cannot read YOLO label file {path!r}: {e.strerror}.") from e
    polygons = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, values = int(fields[0]), np.array(fields[1:], np.float64)
        except ValueError as e:
            raise UserError(f"YOLO label file {path!r}, line {number}: {e}; each line is "
                            f"'<class> x1 y1 x2 y2 x3 y3 ...' (numbers).") from e
        if cls != class_id:
            continue
        if len(values) < 6 or len(values) % 2 or not np.all((values >= 0) & (values <= 1)):
            raise UserError(f"YOLO label file {path!r}, line {number}: a segment needs at "
                            f"least 3 x, y pairs, each in [0, 1] (normalised by the image's "
                            f"size); a detection box line (5 numbers) is not a mask.")
        polygons.append(values.reshape(-1, 2))
    return polygons


def read_yolo(root: str, sizes: Mapping[str, tuple[int, int]],
              class_id: int = 0) -> list[LabelledImage]:
    """Masks from a YOLO-seg dataset's label files, drawn at each image's size.

    An image without a label file is a background image (an empty mask), as in YOLO.

    Args:
        root: the dataset folder (holding labels/).
        sizes: image path relative to the images folder -> (height, width).
        class_id: the class to read.

    Returns:
        one LabelledImage per entry of `sizes`, in its order (holes filled: see yolo_polygons).

    Raises:
        UserError: no labels/ folder, or a malformed label file.
    """
    if not os.path.isdir(os.path.join(root, "labels")):
        raise UserError(f"No labels/ folder in {root!r}; pass the YOLO dataset's folder (the "
                        f"one holding labels/ beside images/).")
    out = []
    for name, (height, width) in sizes.items():
        path = yolo_label_path(root, name)
        polygons = read_yolo_polygons(path, class_id) if os.path.exists(path) else []
        out.append(LabelledImage(name, yolo_mask(polygons, int(height), int(width))))
    return out
