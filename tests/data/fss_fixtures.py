"""Helpers that draw tiny FSS-1000-layout folders with PIL for the data tests."""
import os

import numpy as np
from PIL import Image


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth RGB image (gradients + a rectangle): JPEG keeps it within a few levels."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 200, size=3)
    image = base + 40 * np.stack([xx, yy, xx * yy], -1)
    y0, x0 = rng.integers(0, size // 2, size=2)
    image[y0:y0 + size // 3, x0:x0 + size // 3] = rng.uniform(0, 255, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def box_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A {0,1} mask with one rectangle."""
    mask = np.zeros((size, size), np.uint8)
    y0, x0 = rng.integers(0, size // 2, size=2)
    h, w = rng.integers(size // 4, size // 2, size=2)
    mask[y0:y0 + h, x0:x0 + w] = 1
    return mask


def write_pair(folder, stem, image: np.ndarray, mask: np.ndarray, *, mask_scale: int = 255) -> None:
    """Save `<stem>.jpg` (quality 95) and `<stem>.png` (mask * mask_scale, mode L)."""
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, f"{stem}.jpg"), quality=95)
    Image.fromarray((mask * mask_scale).astype(np.uint8)).save(os.path.join(folder, f"{stem}.png"))


def make_fss(root, classes: dict, size: int = 32, seed: int = 0) -> dict:
    """Write {class: n_pairs} under root; returns {class: [(image, {0,1} mask), ...]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in classes.items():
        written[name] = []
        for stem in range(1, n + 1):
            image, mask = smooth_image(rng, size), box_mask(rng, size)
            write_pair(os.path.join(root, name), str(stem), image, mask)
            written[name].append((image, mask))
    return written
