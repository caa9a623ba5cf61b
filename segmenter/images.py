"""Images in and out of the segmenter: what `fit` and `predict` accept (arrays or PIL images of
any size and mode, made uniform), image files read as displayed, and the resizes to the model's
square and back.

Images become uint8 RGB as displayed (a PIL image's EXIF orientation applied, 16-bit greyscale
scaled, alpha dropped); a float array is read as 0..255, or as 0..1 when its maximum is <= 1.
Masks follow the converter's one mask rule (`data.masks.binarize_mask`: 0/255, 0/1, bool,
anti-aliased, palette, alpha and coloured masks). A PIL image and its PIL mask share the
image's EXIF orientation, as in the converter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from data.decode import orient, orient_pair, to_rgb
from data.masks import binarize_mask
from errors import UserError

MIN_SIDE = 2


def _array_image(array: np.ndarray, what: str) -> Image.Image:
    """A numpy image as PIL (channels last: H x W, H x W x 1/3/4)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise UserError(f"{what} has shape {array.shape}; expected H x W, H x W x 3 or "
                        f"H x W x 4 (channels last).")
    if array.dtype != np.uint8:
        value = array.astype(np.float64)
        if not np.isfinite(value).all():
            raise UserError(f"{what} holds NaN or inf.")
        if value.max(initial=0) <= 1.0:
            value = value * 255.0
        array = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 4:
        return Image.fromarray(array, mode="RGBA")
    return Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")


def _pil(value, what: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return _array_image(np.asarray(value), what)
    raise UserError(f"{what} is a {type(value).__name__}; pass a numpy array or a PIL image.")


def _checked(array: np.ndarray, what: str) -> np.ndarray:
    if min(array.shape[:2]) < MIN_SIDE:
        raise UserError(f"{what} is {array.shape[1]}x{array.shape[0]} pixels; it needs at least "
                        f"{MIN_SIDE} on each side.")
    return array


def as_rgb(image, what: str = "image") -> np.ndarray:
    """One image as uint8 (H, W, 3), as displayed.

    Args:
        image: numpy array or PIL image.
        what: how to name it in an error (e.g. "query 3").

    Returns:
        uint8 (H, W, 3).
    """
    pil = _pil(image, what)
    if isinstance(image, Image.Image):
        pil = orient(pil)
    if pil.mode == "RGBA":
        pil = pil.convert("RGB")
    return _checked(to_rgb(pil, what), what)


def as_pair(image, mask, what: str = "example") -> tuple[np.ndarray, np.ndarray]:
    """An example image and its mask as uint8 (H, W, 3) and {0, 1} uint8 (H, W).

    Args:
        image: numpy array or PIL image.
        mask: numpy array or PIL image, same size as the image.
        what: how to name the pair in an error (e.g. "example 2").

    Returns:
        (image, mask).

    Raises:
        UserError: an unusable value, or a mask of another size than its image.
    """
    pil_image, pil_mask = _pil(image, f"{what}'s image"), _pil(mask, f"{what}'s mask")
    if isinstance(image, Image.Image):
        if isinstance(mask, Image.Image):
            pil_image, pil_mask = orient_pair(pil_image, pil_mask, image_path=what,
                                              mask_path=f"{what}'s mask")
        else:
            pil_image = orient(pil_image)
    if pil_image.mode == "RGBA":
        pil_image = pil_image.convert("RGB")
    rgb = _checked(to_rgb(pil_image, f"{what}'s image"), f"{what}'s image")
    binary = binarize_mask(pil_mask)
    if binary.shape != rgb.shape[:2]:
        raise UserError(f"{what}: the mask is {binary.shape[1]}x{binary.shape[0]} but its image "
                        f"is {rgb.shape[1]}x{rgb.shape[0]}; they must have the same size.")
    return rgb, binary


def as_list(images, what: str, count: int | None = None) -> list:
    """A single image or a sequence of them as a list.

    Args:
        images: one image, a sequence of images, or a stacked array: (N, H, W, C) is N images;
            (N, H, W) is N masks when `count` = N > 1 (else one H x W x C image).
        what: how to name the argument in an error.
        count: the number of images the masks go with.

    Returns:
        list.
    """
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        stacked = images.ndim == 4 or (images.ndim == 3 and images.shape[0] == count and
                                       (count > 1 or images.shape[-1] not in (3, 4)))
        return list(images) if stacked else [images]
    if isinstance(images, (str, bytes)):
        raise UserError(f"{what}: pass images (numpy arrays or PIL images), not a path; open "
                        f"files with PIL.Image.open.")
    if not isinstance(images, Sequence) and not hasattr(images, "__iter__"):
        raise UserError(f"{what}: expected a list of images. Received: {type(images).__name__}")
    return list(images)


_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_rgb(path: str) -> np.ndarray:
    """Decode an image file as uint8 RGB (H, W, 3), as displayed (EXIF orientation applied).

    Args:
        path: image file.

    Returns:
        uint8 (H, W, 3); 16-bit greyscale is scaled to 8 bit.

    Raises:
        ValueError: the file cannot be decoded; the message names it.
    """
    with _open(path, "image") as im:
        return to_rgb(orient(im), path)


def read_pair(image_path: str, mask_path: str) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, the image's EXIF orientation applied to both (data.decode).

    The mask follows the converter's one mask rule (0/255, 0/1, anti-aliased, coloured and
    alpha masks; see `data.masks.binarize_mask`).

    Args:
        image_path: the image file.
        mask_path: its mask PNG.

    Returns:
        (uint8 (H, W, 3), uint8 (H', W') in {0, 1}); the caller checks that the sizes agree.

    Raises:
        ValueError: an unreadable file or a mask with another orientation; the message names it.
    """
    with _open(image_path, "image") as im, _open(mask_path, "mask") as mk:
        image, mask = orient_pair(im, mk, image_path=image_path, mask_path=mask_path)
        return to_rgb(image, image_path), binarize_mask(mask)


def _open(path: str, what: str) -> Image.Image:
    """An opened, fully decoded image (truncated or corrupt data fails here, naming the file)."""
    try:
        image = Image.open(path)
        image.load()
        return image
    except _READ_ERRORS as e:
        raise UserError(f"Cannot read {what} {path!r}: {e}") from e


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 RGB to (size, size, 3)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a {0, 1} uint8 mask to (height, width)."""
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def probability_at_size(foreground: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one (S, S) foreground-probability map to (height, width), float32.

    Resizing the probabilities before thresholding gives smoother edges than resizing a
    thresholded mask.
    """
    return np.asarray(Image.fromarray(np.asarray(foreground, np.float32), mode="F").resize(
        (width, height), Image.BILINEAR))


def mask_warnings(masks) -> list[str]:
    """Warnings for examples whose mask is empty or covers the whole image.

    Args:
        masks: {0, 1} masks, one per example.

    Returns:
        one line per such example.
    """
    out = []
    for i, mask in enumerate(masks, 1):
        if not mask.any():
            out.append(f"example {i}'s mask is empty: it shows no object, so it teaches the "
                       f"model that everything is background")
        elif mask.all():
            out.append(f"example {i}'s mask covers the whole image: it teaches the model that "
                       f"everything is the object")
    return out


def as_examples(images, masks) -> list[tuple[np.ndarray, np.ndarray]]:
    """The examples as `Segmenter.fit` sees them.

    Args:
        images: one image or a list (numpy arrays or PIL images, any size and mode).
        masks: one mask per image, its size.

    Returns:
        (uint8 RGB as displayed, {0, 1} mask) pairs.

    Raises:
        UserError: no examples, a count mismatch, or an unusable image or mask.
    """
    images = as_list(images, "images")
    masks = as_list(masks, "masks", count=len(images))
    if not images:
        raise UserError("fit needs at least one example: an image and its mask.")
    if len(images) != len(masks):
        raise UserError(f"fit got {len(images)} images but {len(masks)} masks; give one "
                        f"mask per image.")
    return [as_pair(image, mask, f"example {i}")
            for i, (image, mask) in enumerate(zip(images, masks), 1)]
