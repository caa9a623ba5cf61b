"""Tiny multi-class datasets in MTL-Segmentation's COCO layout and in COCO-Stuff's, and
MTL-Segmentation's
FewShotPreprocessing.py folders: colour-coded boxes on a noisy grey background."""
import os

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 80, 225), (40, 175, 60), (235, 210, 40), (215, 50, 200)]


def draw(rng: np.random.Generator, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (S,S,3), class ids uint8 (S,S)): 1-3 boxes of classes 1..K-1 on class 0."""
    image = rng.normal(128, 12, (size, size, 3))
    ids = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(1, num_classes))
        h, w = rng.integers(size // 4, size // 2, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        image[y:y + h, x:x + w] = np.asarray(COLOURS[(c - 1) % len(COLOURS)]) + \
            rng.normal(0, 10, (h, w, 3))
        ids[y:y + h, x:x + w] = c
    return np.clip(image, 0, 255).astype(np.uint8), ids


def _save(array: np.ndarray, path: str, **kwargs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def make_seed_coco(root, num_classes: int = 3, counts=(16, 8), size: int = 32,
                   seed: int = 0) -> str:
    """MTL-Segmentation's COCO layout: DIR/{train,val}/<n>.jpg, DIR/labels/{train,val}/<n>.png with
    grey value c * 255 / (K - 1) rounded to an integer."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), counts):
        for i in range(n):
            image, ids = draw(rng, size, num_classes)
            _save(image, os.path.join(root, split, f"{i}.jpg"), quality=95)
            grey = np.rint(ids * 255.0 / (num_classes - 1)).astype(np.uint8)
            _save(grey, os.path.join(root, "labels", split, f"{i}.png"))
    return str(root)


def make_coco_stuff(root, num_classes: int = 4, counts=(16, 8), size: int = 32,
                    seed: int = 0) -> str:
    """COCO-Stuff 164k layout: DIR/images/{train2017,val2017}/<id>.jpg with id maps in
    DIR/annotations/{train2017,val2017}/<id>.png; a 3-px border is unlabelled (255)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train2017", "val2017"), counts):
        for i in range(n):
            image, ids = draw(rng, size, num_classes)
            ids[:3], ids[-3:], ids[:, :3], ids[:, -3:] = 255, 255, 255, 255
            stem = f"{i:012d}"
            _save(image, os.path.join(root, "images", split, f"{stem}.jpg"), quality=95)
            _save(ids, os.path.join(root, "annotations", split, f"{stem}.png"))
    return str(root)


def make_seed_fewshot(fss_root, out_root, splits: dict) -> str:
    """FewShotPreprocessing.py's output from an FSS-layout folder: for each split and class,
    images/<class>/<n>.jpg and labels/<class>/<n>.png.

    Args:
        fss_root: FSS-1000-layout folder (<class>/<n>.jpg + <n>.png).
        out_root: where to write.
        splits: split -> class names taken whole into it.
    """
    for split, classes in splits.items():
        for name in classes:
            for file in sorted(os.listdir(os.path.join(fss_root, name))):
                kind = "images" if file.endswith(".jpg") else "labels"
                folder = os.path.join(out_root, split, kind, name)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(fss_root, name, file), "rb") as src, \
                        open(os.path.join(folder, file), "wb") as dst:
                    dst.write(src.read())
    return str(out_root)
