"""Pixels as the user sees them: EXIF orientation shared by an image and its mask, any mode to RGB.

One rule for the converter and `--fine-tune-task` (support pairs and queries):

* An image's EXIF orientation is applied to the image and, the same way, to its mask: a mask is
  aligned with its image's stored pixels (the layout a PNG mask has when it is made from the
  pixel array). A mask whose size matches only the rotated image was drawn on the displayed
  image and is kept as it is. A mask carrying its own, different orientation tag is refused.
* 16-bit and 32-bit greyscale images are scaled to 8 bit (PIL's RGB conversion clips them,
  turning a 16-bit photo white); every other mode goes through PIL's RGB conversion.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from errors import UserError

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 when absent or invalid."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):  # an unreadable EXIF block: no orientation
        return 1
    return value if value in _TRANSPOSE else 1


def orient(image: Image.Image) -> Image.Image:
    """The image as displayed (its EXIF orientation applied)."""
    method = _TRANSPOSE.get(orientation(image))
    return image if method is None else image.transpose(method)


def orient_pair(image: Image.Image, mask: Image.Image, *, image_path: str = "",
                mask_path: str = "") -> tuple[Image.Image, Image.Image]:
    """Apply the image's EXIF orientation to the image and the same way to its mask.

    Args:
        image, mask: opened PIL images.
        image_path, mask_path: for the error message.

    Returns:
        (image, mask) as displayed; a size mismatch is left for the caller to report.

    Raises:
        UserError: the mask has its own orientation tag, different from the image's.
    """
    o, mask_o = orientation(image), orientation(mask)
    if mask_o not in (1, o):
        raise UserError(f"Mask {mask_path!r} has EXIF orientation {mask_o} but its image "
                        f"{image_path!r} has {o}; save both with the rotation applied.")
    method = _TRANSPOSE.get(o)
    if method is None:
        return image, mask
    shown = image.transpose(method)
    if mask.size == image.size:  # aligned with the stored pixels (square images included)
        return shown, mask.transpose(method)
    return shown, mask  # drawn on the displayed image, or a size mismatch the caller reports


def to_rgb(image: Image.Image, path: str = "") -> np.ndarray:
    """uint8 (H, W, 3) of any mode; 16/32-bit greyscale is scaled to 8 bit, not clipped.

    Raises:
        UserError: greyscale values beyond 16 bit or negative (e.g. a float image).
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        value = np.asarray(image, np.float64)
        top = value.max(initial=0)
        if value.min(initial=0) < 0 or top > 65535 or not np.isfinite(value).all():
            raise UserError(f"Image {path!r} ({image.mode}) has values outside 0..65535; save "
                            f"it as an 8- or 16-bit PNG or a JPEG.")
        if top > 255:
            value = value / 257.0
        grey = np.clip(np.rint(value), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB")).copy()
