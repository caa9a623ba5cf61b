"""How far TF1 `align_corners=True` bilinear resizing moves a mask boundary vs Keras' half-pixel.

The reference upsamples with `align_corners=True` in each RSD module (14 -> 56 at 224 px input) and in
the final resize (56 -> 224). Keras' `ops.image.resize` uses half-pixel centres. Loading the paper's
weights into a half-pixel model therefore shifts its predictions; this prints by how much, in pixels
at 224, for a straight mask boundary swept across the image (a ramp of logits crossing zero), and
how much a thresholded disk mask changes. Run: `.venv/bin/python benchmarks/align_corners_shift.py`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _resize(x, size, align_corners):
    if align_corners:
        return tf.compat.v1.image.resize(x, size, method="bilinear", align_corners=True).numpy()
    return keras.ops.convert_to_numpy(keras.ops.image.resize(x, size, interpolation="bilinear"))


def _upsample(x, chain, align_corners):
    for s in chain:
        x = _resize(x, (s, s), align_corners)
    return x


def _zero_crossing(row):
    i = np.where(np.sign(row[:-1]) * np.sign(row[1:]) < 0)[0]
    return (i + row[i] / (row[i] - row[i + 1]))[0] if len(i) else np.nan


def boundary_shift(source: int, chain: list[int]) -> np.ndarray:
    """|boundary position (align corners) - boundary position (half pixel)|, output pixels."""
    shifts = []
    for t in np.linspace(1, source - 2, 400):  # boundary position in source pixels
        ramp = np.tile(np.arange(source) + 0.5 - t, (source, 1)).astype("float32")[None, ..., None]
        a, h = (_zero_crossing(_upsample(ramp, chain, ac)[0, 0, :, 0]) for ac in (True, False))
        shifts.append(abs(a - h))
    return np.array(shifts)


def disk_agreement(source: int, chain: list[int], n: int = 200, seed: int = 0):
    """Mean fraction of pixels whose label flips, and mean IoU between the two thresholded masks."""
    rng = np.random.default_rng(seed)
    flipped, ious = [], []
    yy, xx = np.mgrid[0:source, 0:source] + 0.5
    for _ in range(n):
        c, r = rng.uniform(0.2, 0.8, 2) * source, rng.uniform(0.1, 0.35) * source
        logit = (r - np.hypot(yy - c[0], xx - c[1])).astype("float32")[None, ..., None]
        a, h = (_upsample(logit, chain, ac)[0, ..., 0] > 0 for ac in (True, False))
        flipped.append((a != h).mean())
        ious.append((a & h).sum() / (a | h).sum())
    return float(np.mean(flipped)), float(np.mean(ious))


def main():
    """Print the shift for the final resize alone and for the RSD upsample + final resize chain."""
    for source, chain, what in ((56, [224], "final resize 56->224"),
                                (14, [56, 224], "RSD upsample 14->56, then final resize ->224")):
        s = boundary_shift(source, chain)
        flipped, iou = disk_agreement(source, chain)
        print(f"{what}: boundary shift at 224 px: max {np.nanmax(s):.2f}, mean {np.nanmean(s):.2f}, "
              f"centre {s[len(s) // 2]:.2f}; disks: {100 * flipped:.2f}% pixels flip, "
              f"IoU between the two masks {iou:.3f}")


if __name__ == "__main__":
    main()
