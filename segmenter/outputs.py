"""What segmenting a folder writes into its masks folder, one image at a time, each file whole.

Per image (its path relative to the images' tree, `rel`, and a stem no other image of its folder
shares, `stem`):

    png           <out>/<rel dir>/<stem>_mask.png      0/255 at the image's own size
    overlay       <out>/<rel dir>/<stem>_overlay.png   the mask drawn on the photo
    yolo          <out>/labels/<rel dir>/<stem>.txt    YOLO-seg polygons (holes come back filled)
    (always)      <out>/.metaseg/images/<rel>.json     the image's record: its size, its mask as
                                                       COCO RLE, the files above with their
                                                       sha256; written last, so a record means
                                                       the image is done

and, from every record, once the folder is done (so they hold every image, resumed ones too):

    coco          <out>/instances.json                 COCO instances, RLE per image
    label_studio  <out>/label_studio.json              tasks with brush pre-labels, to import
    (always)      <out>/summary.json                   settings, counts, skipped files, IoUs

Every file is written to a temporary name and renamed (`storage.atomic`), so a run killed at
any point leaves each file whole or absent. The final files are streamed from the records one
image at a time, so memory does not grow with the number of images.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from adapt.predictions import overlay
from data.annotations import coco_annotation, coco_categories, yolo_text
from data.label_studio_format import prediction_task
from storage import atomic

FORMATS = ("png", "overlay", "coco", "yolo", "label_studio")
PER_IMAGE = ("png", "overlay", "yolo")  # the formats with a file per image
STATE_DIR = ".metaseg"
COCO_FILE, LABEL_STUDIO_FILE, SUMMARY_FILE = "instances.json", "label_studio.json", "summary.json"


def per_image_paths(rel: str, stem: str, formats) -> dict[str, str]:
    """The files an image gets, by format, relative to the masks folder.

    Args:
        rel: the image's path relative to its tree.
        stem: its output stem (unique in its folder).
        formats: the formats asked for.

    Returns:
        format -> relative path, for the per-image formats asked for.
    """
    folder = os.path.dirname(rel)
    paths = {"png": os.path.join(folder, f"{stem}_mask.png"),
             "overlay": os.path.join(folder, f"{stem}_overlay.png"),
             "yolo": os.path.join("labels", folder, f"{stem}.txt")}
    return {f: paths[f] for f in PER_IMAGE if f in formats}


def record_path(out: str, rel: str) -> str:
    """Where the record of the image `rel` lives in the masks folder `out`."""
    return os.path.join(out, STATE_DIR, "images", rel + ".json")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(out: str, rel: str, stem: str, mask: np.ndarray, formats, *,
                photo: np.ndarray | None = None, extra: dict | None = None) -> dict:
    """Write one image's files, then its record.

    Args:
        out: the masks folder.
        rel: the image's path relative to its tree.
        stem: its output stem.
        mask: uint8 (H, W), nonzero = the object, at the image's own size.
        formats: the formats asked for (the per-image ones are written here).
        photo: the image as displayed (uint8 (H, W, 3)), needed for "overlay".
        extra: more facts for the record (e.g. the IoU against a ground truth).

    Returns:
        the record.
    """
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    written = {}
    for fmt, path in per_image_paths(rel, stem, formats).items():
        if fmt == "png":
            data = _png_bytes(binary * np.uint8(255))
        elif fmt == "overlay":
            data = _png_bytes(overlay(photo, binary))
        else:
            data = yolo_text(binary).encode("ascii")
        target = os.path.join(out, path)
        digest = hashlib.sha256(data).hexdigest()  # to tell a file edited since
        if file_digest(target) != digest:  # a killed run's last files stay as they are
            os.makedirs(os.path.dirname(target), exist_ok=True)
            atomic.write_bytes(target, data)
        written[path] = digest
    rle = coco_mask.encode(np.asfortranarray(binary))
    record = {"image": rel, "height": int(binary.shape[0]), "width": int(binary.shape[1]),
              "foreground_fraction": float(binary.mean()), "files": written,
              "rle": {"size": [int(s) for s in rle["size"]],
                      "counts": rle["counts"].decode("ascii")}, **(extra or {})}
    path = record_path(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_json(path, record)
    return record


def file_digest(path: str) -> str | None:
    """sha256 of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def read_record(out: str, rel: str) -> dict | None:
    """The record of image `rel`, or None when it has none (not done, or unreadable)."""
    try:
        with open(record_path(out, rel), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("image") == rel else None


def record_mask(record: dict) -> np.ndarray:
    """The record's mask, uint8 {0, 1} (H, W)."""
    rle = {"size": record["rle"]["size"], "counts": record["rle"]["counts"].encode("ascii")}
    return coco_mask.decode(rle).astype(np.uint8)


def _elements(items):
    """The items as the elements of a JSON list, one text chunk each."""
    for i, item in enumerate(items):
        yield ("," if i else "") + json.dumps(item)


def _records(out: str, rels):
    """The records of the images in `rels` that have one, in that order (read one at a time)."""
    for rel in rels:
        record = read_record(out, rel)
        if record is not None:
            yield record


def write_coco(out: str, rels, category: str) -> str:
    """instances.json of every image in `rels` that has a record (file_name: its path in the
    tree; one RLE annotation per non-empty mask, category `category`)."""
    images = ({"id": i, "file_name": r["image"], "height": r["height"], "width": r["width"]}
              for i, r in enumerate(_records(out, rels), 1))
    annotations = (a for a in (coco_annotation(record_mask(r), i, i)
                               for i, r in enumerate(_records(out, rels), 1)) if a is not None)

    def chunks():
        yield '{"images": ['
        yield from _elements(images)
        yield '], "annotations": ['
        yield from _elements(annotations)
        yield f'], "categories": {json.dumps(coco_categories(category))}}}'
    return atomic.write_chunks(os.path.join(out, COCO_FILE), chunks())


def write_label_studio(out: str, rels, label: str) -> str:
    """label_studio.json: a task per image with its mask as a brush pre-label (data.image is
    the image's path in the tree: point it at where Label Studio serves the images)."""
    tasks = (prediction_task(r["image"], record_mask(r), label) for r in _records(out, rels))
    return atomic.write_chunks(os.path.join(out, LABEL_STUDIO_FILE),
                         itertools.chain(["["], _elements(tasks), ["]"]))


def write_summary(out: str, rels, summary: dict) -> str:
    """summary.json: `summary`, and per image with a record its size, foreground fraction and
    IoU (when scored), streamed from the records."""
    def queries():
        for r in _records(out, rels):
            yield {"query": r["image"], "height": r["height"], "width": r["width"],
                   "foreground_fraction": r["foreground_fraction"],
                   **({"iou": r["iou"]} if "iou" in r else {})}

    head = json.dumps(summary, indent=1, sort_keys=True)
    return atomic.write_chunks(os.path.join(out, SUMMARY_FILE), itertools.chain(
        [head[:-1].rstrip() + ',\n "queries": ['], _elements(queries()), ["]\n}\n"]))
