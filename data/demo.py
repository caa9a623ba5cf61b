"""Procedurally drawn few-shot segmentation data in FSS-1000 layout (for CPU demos and tests).

A class is one (shape, texture, colour) combination out of 10 x 6 x 8 = 480, e.g. a red striped
disc. Every image shows one object of its class plus 1-2 distractor objects of other classes on a
noisy, low-saturation background, in random depth order; the mask is the visible part of the
class object (at least 60 % of it; it spans 36-56 % of the side, distractors 26-46 %). A distractor
differs from the class object in at least two of the three attributes, so the support masks (not
"segment anything saturated") decide what to segment. Class c's images depend only on (seed, c),
so growing --num_classes keeps earlier classes identical.

Class folder names are "c<k>_<colour>_<texture>_<shape>" with k a seeded shuffle of the classes:
the reference carves its validation classes off the alphabetical end (ml4ai/mliis
data/fss_1000_utils.py), and
the prefix keeps that tail a random mix of colours, textures and shapes.

CLI: python -m data.demo --out_dir demo_fss --num_classes 240 --images_per_class 10 --image_size 128
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "ellipse", "diamond",
          "crescent", "arrow")
TEXTURES = ("solid", "stripes", "checker", "dots", "gradient", "rings")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (40, 80, 225), "yellow": (235, 210, 40),
    "magenta": (215, 50, 200), "cyan": (40, 200, 215), "orange": (245, 130, 30),
    "purple": (115, 45, 170),
}
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * len(COLOURS)
MARKER = ".metaseg_demo.json"
RADIUS_RANGE = (0.18, 0.28)     # class object radius / image side: 36-56 % of the side across
DISTRACTOR_RADIUS_RANGE = (0.13, 0.23)
MIN_VISIBLE = 0.6               # fraction of the class object that stays visible under occluders
NOISE_STD = 6.0


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean footprint of a unit-radius shape in object coordinates (u, v)."""
    r = np.hypot(u, v)
    if shape == "disc":
        return r < 1.0
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.78
    if shape == "triangle":
        return (v > -0.5) & (np.sqrt(3.0) * abs(u) + v < 1.0)
    if shape == "star":
        return r < 0.55 + 0.45 * np.cos(5.0 * np.arctan2(v, u))
    if shape == "ring":
        return (r < 1.0) & (r > 0.55)
    if shape == "cross":
        return ((abs(u) < 0.3) & (abs(v) < 0.95)) | ((abs(v) < 0.3) & (abs(u) < 0.95))
    if shape == "ellipse":
        return u ** 2 + (v / 0.55) ** 2 < 1.0
    if shape == "diamond":
        return abs(u) / 0.75 + abs(v) < 1.0
    if shape == "crescent":
        return (r < 1.0) & ((u - 0.45) ** 2 + v ** 2 > 0.75 ** 2)
    if shape == "arrow":
        return (((abs(v) < 0.25) & (u > -0.95) & (u < 0.15))
                | ((u >= 0.15) & (u < 0.95) & (abs(v) < (0.95 - u) * 1.1)))
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness pattern in [0, 1] over object coordinates (it rotates with the object)."""
    if texture == "solid":
        return np.ones_like(u)
    if texture == "stripes":
        return (np.sin(u * np.pi * 3.0) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0).astype(np.float32)
    if texture == "dots":
        fu, fv = (u * 2.5) % 1.0 - 0.5, (v * 2.5) % 1.0 - 0.5
        return (np.hypot(fu, fv) > 0.28).astype(np.float32)
    if texture == "gradient":
        return np.clip((u + 1.0) / 2.0, 0.0, 1.0)
    if texture == "rings":
        return (np.sin(np.hypot(u, v) * np.pi * 4.0) > 0).astype(np.float32)
    raise ValueError(f"Unknown texture {texture!r}; expected one of {TEXTURES}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation tinted gradient with faint waves: varied, but never a palette colour."""
    axis = np.arange(size, dtype=np.float32)
    grey = rng.uniform(70, 190)
    tint = rng.uniform(-18, 18, size=3).astype(np.float32)
    direction, strength = rng.uniform(0, 2 * np.pi), rng.uniform(-50, 50)
    freq, phase = rng.uniform(1.0, 4.0, size=2), rng.uniform(0, 2 * np.pi, size=2)
    # Separable terms (outer sums/products of 1-D profiles) keep this cheap.
    ramp_x = (axis / size - 0.5) * strength * np.cos(direction)
    ramp_y = (axis / size - 0.5) * strength * np.sin(direction)
    wave_x = np.sin(2 * np.pi * freq[0] * axis / size + phase[0])
    wave_y = 10.0 * np.sin(2 * np.pi * freq[1] * axis / size + phase[1])
    plane = grey + ramp_y[:, None] + ramp_x[None, :] + wave_y[:, None] * wave_x[None, :]
    return plane.astype(np.float32)[..., None] + tint


def _draw(canvas: np.ndarray, labels: np.ndarray, label: int, attributes: tuple[str, str, str],
          centre: np.ndarray, radius: float, angle: float) -> None:
    """Paint one object over canvas (in place) and mark its pixels with `label`."""
    shape, texture, colour = attributes
    size = canvas.shape[0]
    # Every shape fits in its unit circle, so only the bounding box of that circle is evaluated.
    x0, x1 = max(0, int(centre[0] - radius) - 1), min(size, int(centre[0] + radius) + 2)
    y0, y1 = max(0, int(centre[1] - radius) - 1), min(size, int(centre[1] + radius) + 2)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - centre[0]
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - centre[1]
    cos, sin = np.float32(np.cos(angle) / radius), np.float32(np.sin(angle) / radius)
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    inside = _shape_inside(shape, u, v)
    shade = 0.35 + 0.65 * _texture(texture, u[inside], v[inside])
    canvas[y0:y1, x0:x1][inside] = shade[:, None] * np.asarray(COLOURS[colour], np.float32)
    labels[y0:y1, x0:x1][inside] = label


def _distractor(rng: np.random.Generator, target: tuple[str, str, str]) -> tuple[str, str, str]:
    """A random attribute triple sharing at most one attribute with the target."""
    while True:
        candidate = (SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))],
                     tuple(COLOURS)[rng.integers(len(COLOURS))])
        if sum(a == b for a, b in zip(candidate, target)) <= 1:
            return candidate


def render_pair(rng: np.random.Generator, attributes: tuple[str, str, str],
                image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of a class and its mask.

    Args:
        rng: generator for this image's randomness.
        attributes: (shape, texture, colour) of the class.
        image_size: side S in pixels.

    Returns:
        (image uint8 (S,S,3), mask uint8 (S,S) in {0,1}: the visible pixels of the class object).
    """
    num_distractors = int(rng.integers(1, 3))
    while True:  # re-place until distractors hide at most 1 - MIN_VISIBLE of the class object
        canvas = _background(rng, image_size)
        labels = np.zeros((image_size, image_size), np.uint8)
        objects = [attributes] + [_distractor(rng, attributes) for _ in range(num_distractors)]
        order = rng.permutation(len(objects))  # random depth order: the class object may be occluded
        for index in order:
            radius_range = RADIUS_RANGE if index == 0 else DISTRACTOR_RADIUS_RANGE
            radius = rng.uniform(*radius_range) * image_size
            centre = rng.uniform(radius * 0.8, image_size - radius * 0.8, size=2)
            _draw(canvas, labels, int(index) + 1, objects[index], centre, radius,
                  rng.uniform(0, 2 * np.pi))
            if index == 0:
                full_area = int((labels == 1).sum())
        mask = labels == 1
        if full_area > 0 and mask.sum() >= MIN_VISIBLE * full_area:
            break
    # Uniform pixel noise with std NOISE_STD; rng.bytes is ~10x faster than standard_normal here.
    noise = np.frombuffer(rng.bytes(canvas.size), np.uint8).reshape(canvas.shape)
    canvas += (noise.astype(np.float32) - 127.5) * np.float32(NOISE_STD * np.sqrt(3.0) / 127.5)
    return np.clip(canvas, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _write_pair(image: np.ndarray, mask: np.ndarray, stem: str) -> None:
    # Encoding in memory and writing once is ~2x faster than PIL's save(path) on this file system;
    # it runs on a thread pool (PIL and file I/O release the GIL) while the next image is drawn.
    for array, suffix, kwargs in ((image, "jpg", {"format": "JPEG", "quality": 92}),
                                  (mask * 255, "png", {"format": "PNG", "compress_level": 1})):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, **kwargs)
        with open(f"{stem}.{suffix}", "wb") as f:
            f.write(buffer.getvalue())


def class_attributes(num_classes: int, seed: int) -> dict[str, tuple[str, str, str]]:
    """Names and (shape, texture, colour) of the demo classes.

    Args:
        num_classes: 1..MAX_CLASSES (480).
        seed: picks which combinations are used and how they are numbered.

    Returns:
        dict folder name -> (shape, texture, colour), e.g. "c017_red_stripes_disc".
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"--num_classes must be in [1, {MAX_CLASSES}]. Received: {num_classes}")
    combos = list(itertools.product(SHAPES, TEXTURES, COLOURS))
    chosen = np.random.default_rng([seed, 0]).permutation(len(combos))[:num_classes]
    return {f"c{k:03d}_{combos[i][2]}_{combos[i][1]}_{combos[i][0]}": combos[i]
            for k, i in enumerate(chosen)}


def make_demo_dataset(out_dir: str, *, num_classes: int = 240, images_per_class: int = 10,
                      image_size: int = 128, seed: int = 0) -> dict:
    """Write a seeded demo dataset in FSS-1000 layout (`<class>/<n>.jpg` + `<n>.png`, mask 0/255).

    The folder is built in a temporary sibling and swapped in whole; an existing out_dir is
    replaced only if it holds a previous demo (marker file), so a typo cannot wipe other data.

    Args:
        out_dir: destination folder.
        num_classes: number of classes (1..480).
        images_per_class: pairs per class (>= 2).
        image_size: side in pixels (>= 32).
        seed: everything (class choice and every image) is a function of it.

    Returns:
        summary dict: out_dir, num_classes, images_per_class, image_size, seed, classes
        (name -> [shape, texture, colour]), seconds.

    Raises:
        ValueError: bad sizes, or out_dir is a non-empty folder that is not a demo dataset.
    """
    if images_per_class < 2:
        raise ValueError(f"--images_per_class must be >= 2. Received: {images_per_class}")
    if image_size < 32:
        raise ValueError(f"--image_size must be >= 32. Received: {image_size}")
    classes = class_attributes(num_classes, seed)
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            not os.path.isfile(os.path.join(out_dir, MARKER)):
        raise ValueError(f"--out_dir {out_dir!r} is a non-empty folder that is not a demo dataset; "
                         f"choose a new or empty folder.")
    start = time.time()
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    umask = os.umask(0o22)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like a mkdir
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            writes = []
            # Class k's generator depends on (seed, k) only, and class k is the same combination
            # for any num_classes > k, so a bigger dataset extends a smaller one.
            for k, (name, attributes) in enumerate(classes.items()):
                rng = np.random.default_rng([seed, 1, k])
                folder = os.path.join(tmp, name)
                os.mkdir(folder)
                for n in range(1, images_per_class + 1):
                    image, mask = render_pair(rng, attributes, image_size)
                    writes.append(pool.submit(_write_pair, image, mask,
                                              os.path.join(folder, str(n))))
            for write in writes:
                write.result()  # re-raises a failed write
        summary = {"out_dir": out_dir, "num_classes": num_classes,
                   "images_per_class": images_per_class, "image_size": image_size, "seed": seed,
                   "classes": {k: list(v) for k, v in sorted(classes.items())}}
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "data"))
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    summary["seconds"] = round(time.time() - start, 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m data.demo`).

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        process exit code.
    """
    parser = argparse.ArgumentParser(
        description="Draw a seeded few-shot segmentation dataset in FSS-1000 layout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="destination folder")
    parser.add_argument("--num_classes", type=int, default=240, help=f"1..{MAX_CLASSES}")
    parser.add_argument("--images_per_class", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = make_demo_dataset(args.out_dir, num_classes=args.num_classes,
                                    images_per_class=args.images_per_class,
                                    image_size=args.image_size, seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['num_classes']} classes x {summary['images_per_class']} pairs "
          f"({summary['image_size']} px) to {summary['out_dir']} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
