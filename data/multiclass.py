"""A multi-class segmentation dataset for MTL pre-training (COCO as MTL-Segmentation reads it, or
official COCO-Stuff label maps) -> in-memory uint8 arrays per split.

Two layouts (`--dataset`):
* "COCO", MTL-Segmentation's (ahirsharan/MTL-Segmentation dataloader/dataset_loader.py):
  `DIR/train/<stem>.jpg`, `DIR/val/<stem>.jpg`, labels `DIR/labels/{train,val}/<stem>.png`,
  greyscale, class c stored as grey value c * 255 / (K - 1) (the seed reads value x (K-1) / 255).
  A value decodes to the nearest class (the seed truncated, so 63 at K = 5 became class 0);
  a value more than 1 grey level away from every class level matches no class and rejects the
  file. Every pixel is labelled.
* "COCOStuff", the official COCO-Stuff 164k release: `DIR/images/{train2017,val2017}/<stem>.jpg`
  with `DIR/annotations/{train2017,val2017}/<stem>.png` (stuffthingmaps: one class id per pixel,
  0..181, 255 = unlabelled); split folders named `train`/`val` are accepted too. Ids must be
  < K (--num_classes, 182 for the full release) or 255; 255 stays 255 (IGNORE_LABEL) and is
  ignored by the losses and the mIoU.

Images are resized to S x S (bilinear; non-square images are stretched, as the FSS-1000
converter does), labels with nearest neighbour. One pass checks everything and logs each problem
with its path, as the converter does: corrupt or unreadable image or label, image without label,
label without image, size mismatch, label values that match no class. Bad pairs are skipped and
counted; `strict` raises before anything is returned. Memory: N x S x S x 4 bytes (the 118k
COCO-Stuff training images take 24 GB at 224 px, 7.7 GB at 128 px).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from data.problems import Problem, ProblemsFound, open_pair

IGNORE_LABEL = 255
LAYOUTS = ("COCO", "COCOStuff")
IMAGE_EXTENSIONS = (".jpg", ".jpeg")
LABEL_EXTENSION = ".png"
GREY_TOLERANCE = 1.0  # grey levels a stored value may be off its class level (8-bit rounding)
_STUFF_SPLITS = {"train": ("train2017", "train"), "val": ("val2017", "val")}


@dataclass(frozen=True)
class MulticlassSplit:
    """The good pairs of one split.

    Attributes:
        images: uint8 (n, S, S, 3) RGB.
        labels: uint8 (n, S, S), class ids 0..K-1, IGNORE_LABEL for unlabelled pixels.
        stems: file stem of each pair.
    """

    images: np.ndarray
    labels: np.ndarray
    stems: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class MulticlassData:
    """A loaded multi-class dataset: train and val splits plus what the check found."""

    layout: str
    root: str
    num_classes: int
    image_size: int
    train: MulticlassSplit
    val: MulticlassSplit
    problems: tuple[Problem, ...] = field(default=())

    def class_pixels(self, split: str) -> np.ndarray:
        """int64 (K,) labelled pixels per class in the split ("train" or "val")."""
        labels = getattr(self, split).labels
        return np.bincount(labels[labels != IGNORE_LABEL].ravel(),
                           minlength=self.num_classes)[:self.num_classes].astype(np.int64)


def split_folders(layout: str, dataset_dir: str, split: str) -> tuple[str, str]:
    """(image folder, label folder) of a split in a layout.

    Args:
        layout: "COCO" or "COCOStuff".
        dataset_dir: the --dataset_dir root.
        split: "train" or "val".

    Returns:
        the two folder paths (the first existing candidates for COCO-Stuff).
    """
    if layout == "COCO":
        return (os.path.join(dataset_dir, split),
                os.path.join(dataset_dir, "labels", split))
    for name in _STUFF_SPLITS[split]:
        images = os.path.join(dataset_dir, "images", name)
        if os.path.isdir(images):
            return images, os.path.join(dataset_dir, "annotations", name)
    name = _STUFF_SPLITS[split][0]
    return os.path.join(dataset_dir, "images", name), os.path.join(dataset_dir, "annotations", name)


def _check_layout(layout: str, dataset_dir: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"--dataset must be one of {LAYOUTS} (or Fewshot). Received: {layout!r}")
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"--dataset_dir {dataset_dir!r} does not exist or is not a folder.")
    for split in ("train", "val"):
        for folder in split_folders(layout, dataset_dir, split):
            if not os.path.isdir(folder):
                other = "COCOStuff" if layout == "COCO" else "COCO"
                hint = ""
                if all(os.path.isdir(f) for f in split_folders(other, dataset_dir, split)):
                    hint = f" It looks like the {other} layout: pass --dataset {other}."
                expected = ("DIR/{train,val}/*.jpg with DIR/labels/{train,val}/*.png"
                            if layout == "COCO" else
                            "DIR/images/{train2017,val2017}/*.jpg with "
                            "DIR/annotations/{train2017,val2017}/*.png")
                raise FileNotFoundError(f"--dataset {layout} --dataset_dir {dataset_dir!r}: "
                                        f"missing folder {folder!r} (expected {expected}).{hint}")


def check_num_classes(layout: str, num_classes: int) -> None:
    """Raise unless K fits the 8-bit class ids, 255 being the unlabelled value (both layouts)."""
    if not 2 <= num_classes <= IGNORE_LABEL:
        raise ValueError(f"--num_classes must be in [2, {IGNORE_LABEL}] for --dataset {layout}: "
                         f"class ids are 8-bit and {IGNORE_LABEL} marks unlabelled pixels, so a "
                         f"class {IGNORE_LABEL} would drop out of the loss and the mIoU. "
                         f"Received: {num_classes}")


def _grey(label: Image.Image) -> np.ndarray:
    """Grey values as the seed reads them (PIL 'L' luminance), float32; 16 bit scaled to 8."""
    if label.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        value = np.asarray(label, np.float32)
        return value / 257.0 if value.max(initial=0) > 255 else value
    return np.asarray(label.convert("L"), np.float32)


def decode_grey_label(label: Image.Image, num_classes: int) -> np.ndarray | str:
    """Seed encoding (grey c * 255 / (K-1)) -> class ids, or why the file is rejected.

    Args:
        label: the label PNG.
        num_classes: K.

    Returns:
        uint8 (H, W) class ids, or a reason string when a value matches no class.
    """
    value = _grey(label)
    step = 255.0 / (num_classes - 1)
    classes = np.clip(np.rint(value / step), 0, num_classes - 1)
    bad = np.abs(value - classes * step) > GREY_TOLERANCE
    if bad.any():
        values = np.unique(value[bad])
        levels = [round(c * step, 1) for c in range(min(num_classes, 8))]
        return (f"{int(bad.sum())} pixel(s) with grey value(s) {values[:6].tolist()} match no "
                f"class: with --num_classes {num_classes} class c is stored as c * 255 / "
                f"{num_classes - 1} ({levels}{'...' if num_classes > 8 else ''}); check "
                f"--num_classes or re-export the label without interpolation")
    return classes.astype(np.uint8)


def decode_id_label(label: Image.Image, num_classes: int) -> np.ndarray | str:
    """COCO-Stuff label map (one id per pixel, 255 unlabelled) -> ids, or why it is rejected.

    Args:
        label: the label PNG ('L', 'P' or 'I' mode).
        num_classes: K; ids must be < K or 255.

    Returns:
        uint8 (H, W) ids with 255 kept, or a reason string.
    """
    if label.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        return (f"label map is mode {label.mode!r}; COCO-Stuff label maps hold one class id per "
                f"pixel (greyscale or palette PNG)")
    ids = np.asarray(label).astype(np.int64)  # 'P': the palette indices are the ids
    bad = (ids >= num_classes) & (ids != IGNORE_LABEL) | (ids < 0)
    if bad.any():
        return (f"class id(s) {np.unique(ids[bad])[:6].tolist()} are not < --num_classes "
                f"{num_classes} and not {IGNORE_LABEL} (unlabelled); pass the dataset's number "
                f"of classes (182 for COCO-Stuff 164k)")
    return ids.astype(np.uint8)


def _load_pair(image_path: str, label_path: str, layout: str, num_classes: int,
               size: int) -> tuple[np.ndarray, np.ndarray] | Problem:
    pair = open_pair(image_path, label_path, "label")
    if isinstance(pair, Problem):
        return pair
    image, label = pair
    decode = decode_grey_label if layout == "COCO" else decode_id_label
    ids = decode(label, num_classes)
    if isinstance(ids, str):
        return Problem(label_path, ids)
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
        ids = np.asarray(Image.fromarray(ids).resize((size, size), Image.NEAREST))
    return np.asarray(rgb, np.uint8), ids


def _scan(image_dir: str, label_dir: str, problems: list[Problem]) -> list[tuple[str, str, str]]:
    """(stem, image, label) of the complete pairs; a Problem for every unpaired file."""
    def files(folder, extensions):
        out = {}
        for name in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in extensions and os.path.isfile(os.path.join(folder, name)):
                out[stem] = os.path.join(folder, name)
        return out

    images = files(image_dir, IMAGE_EXTENSIONS)
    labels = files(label_dir, (LABEL_EXTENSION,))
    problems += [Problem(images[s], f"image without label (expected {label_dir}/{s}.png)")
                 for s in sorted(set(images) - set(labels))]
    problems += [Problem(labels[s], f"label without image (expected {image_dir}/{s}.jpg)")
                 for s in sorted(set(labels) - set(images))]
    return [(s, images[s], labels[s]) for s in sorted(set(images) & set(labels))]


def _load_split(layout: str, dataset_dir: str, split: str, num_classes: int, size: int,
                problems: list[Problem], log) -> MulticlassSplit:
    image_dir, label_dir = split_folders(layout, dataset_dir, split)
    found: list[Problem] = []
    pairs = _scan(image_dir, label_dir, found)
    log(f"{split}: {len(pairs)} image/label pairs in {image_dir} + {label_dir}")
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    labels = np.empty((len(pairs), size, size), np.uint8)
    stems = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
        results = pool.map(lambda p: _load_pair(p[1], p[2], layout, num_classes, size), pairs)
        for (stem, _, _), result in zip(pairs, results):
            if isinstance(result, Problem):
                found.append(result)
                continue
            images[len(stems)], labels[len(stems)] = result
            stems.append(stem)
    for p in found:
        log(f"problem: {p}")
    problems += found
    n = len(stems)
    return MulticlassSplit(images=images[:n], labels=labels[:n], stems=tuple(stems))


def load_multiclass(layout: str, dataset_dir: str, num_classes: int, image_size: int, *,
                    strict: bool = False, log=None) -> MulticlassData:
    """Check and decode the train and val splits of a multi-class dataset.

    Args:
        layout: "COCO" (MTL-Segmentation's grey-level labels) or "COCOStuff" (id maps, 255
            unlabelled).
        dataset_dir: the dataset root (--dataset_dir).
        num_classes: K (--num_classes).
        image_size: side S of the decoded images.
        strict: raise ProblemsFound if any problem is found.
        log: callable for progress and problem lines (None = silent).

    Returns:
        MulticlassData.

    Raises:
        FileNotFoundError: missing root or split folder (naming it and the expected layout).
        ValueError: bad K, or a split without any good pair. ProblemsFound: strict and problems.
    """
    log = log or (lambda _msg: None)
    check_num_classes(layout, num_classes)
    _check_layout(layout, dataset_dir)
    problems: list[Problem] = []
    splits = {s: _load_split(layout, dataset_dir, s, num_classes, image_size, problems, log)
              for s in ("train", "val")}
    if strict and problems:
        raise ProblemsFound(problems, "--dataset_dir")
    for split, data in splits.items():
        if len(data) == 0:
            folders = " + ".join(split_folders(layout, dataset_dir, split))
            raise ValueError(f"--dataset_dir {dataset_dir!r}: no good {split} pair in {folders} "
                             f"({len(problems)} problem(s) reported above).")
    data = MulticlassData(layout=layout, root=os.path.abspath(dataset_dir),
                          num_classes=num_classes, image_size=image_size, train=splits["train"],
                          val=splits["val"], problems=tuple(problems))
    log(f"done: {len(data.train)} train and {len(data.val)} val pairs, {num_classes} classes; "
        f"{len(problems)} problem(s); the files named above are skipped")
    return data
