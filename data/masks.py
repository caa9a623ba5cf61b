"""Masks of any PNG mode -> {0, 1}: the one rule for FSS-1000 shards and users' own folders.

Composite over black (RGBA/LA/P with transparency), take the max over R,G,B (16-bit greyscale
is scaled to 8 bit); if the whole mask's max is <= 1 it is a 0/1 mask and foreground =
value >= 0.5, else foreground = value >= 128.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def binarize_mask(mask: Image.Image) -> np.ndarray:
    """The project's one mask rule (every PNG mode), shared by the converter and user folders.

    Args:
        mask: a PIL image of any mode.

    Returns:
        uint8 (H, W) array in {0, 1}.
    """
    if mask.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        value = np.asarray(mask, np.float32)
        if value.max(initial=0) > 255:
            value = value / 257.0
    else:
        if mask.mode not in ("L", "LA", "RGB", "RGBA"):
            mask = mask.convert("RGBA")  # "1", "P" (palette, maybe transparency), CMYK, ...
        array = np.asarray(mask)
        value = array if array.ndim == 2 else array[..., :3].max(axis=-1) \
            if array.shape[-1] >= 3 else array[..., 0]
        if mask.mode in ("LA", "RGBA"):  # composite over black: colour * alpha / 255
            value = value.astype(np.float32) * (array[..., -1].astype(np.float32) / 255.0)
    return binarize_values(value)


def binarize_values(value: np.ndarray) -> np.ndarray:
    """The rule's threshold step on grey values: a mask whose max is <= 1 is a 0/1 mask.

    Args:
        value: one mask (H, W) or a stack (n, H, W) of grey values; each mask is judged alone.
    Returns:
        uint8 array of the same shape in {0, 1}.
    """
    value = np.asarray(value)
    peak = value.max(axis=(-2, -1), keepdims=True)
    return (value >= np.where(peak <= 1, 0.5, 128)).astype(np.uint8)
