"""A user's own few-shot task folder (`--fine-tune-task DIR`), read and validated in full.

Layout:
    DIR/support/<n>.jpg (or .jpeg)  a support image, any size
    DIR/support/<n>.png             its mask, same size (L or RGB; 0 = background, object > 127,
                                    or {0, 1})
    DIR/query/*.jpg|jpeg|png        images to segment (no masks needed; a <n>.png beside a
                                    <n>.jpg query is read as its ground truth, for scoring)

Everything is read and checked before anything is returned, so a caller that writes outputs
only after `load_user_task` succeeds never leaves half a result behind. Images and masks are
kept at their own sizes: whoever feeds a model resizes them (`resize_image`, `resize_mask`) and
writes the predicted masks back at these sizes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.decode import orient, orient_pair, to_rgb
from errors import UserError
from data.masks import binarize_mask

SUPPORT_IMAGE_EXTS = (".jpg", ".jpeg")
MASK_EXT = ".png"


@dataclass(frozen=True)
class UserTask:
    """A validated user task.

    Attributes:
        name: the folder's base name.
        support_images: the k support images as read, uint8 (H_i, W_i, 3).
        support_masks: their masks, uint8 (H_i, W_i) in {0, 1}.
        support_paths: the k support image paths.
        query_images: the q queries as read, uint8 (H_i, W_i, 3).
        query_paths: the q query paths, in natural order.
        query_masks: per query its ground truth uint8 (H_i, W_i) in {0, 1}, or None when the
            folder has none.
    """

    name: str
    support_images: tuple[np.ndarray, ...]
    support_masks: tuple[np.ndarray, ...]
    support_paths: tuple[str, ...]
    query_images: tuple[np.ndarray, ...]
    query_paths: tuple[str, ...]
    query_masks: tuple[np.ndarray | None, ...]


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _files(folder: str, exts: tuple[str, ...]) -> dict[str, str]:
    """stem -> path of the visible files in `folder` whose extension is in `exts`."""
    out: dict[str, str] = {}
    for entry in sorted(os.listdir(folder), key=_natural_key):
        stem, ext = os.path.splitext(entry)
        path = os.path.join(folder, entry)
        if entry.startswith(".") or ext.lower() not in exts or not os.path.isfile(path):
            continue
        if stem in out:
            raise ValueError(f"Two files share the stem {stem!r} in {folder!r}: "
                             f"{os.path.basename(out[stem])!r} and {entry!r}. Keep one.")
        out[stem] = path
    return out


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


def load_user_task(task_dir: str) -> UserTask:
    """Read and validate DIR/support and DIR/query.

    Args:
        task_dir: the user's task folder.

    Returns:
        UserTask.

    Raises:
        FileNotFoundError: the folder, DIR/support or DIR/query is missing.
        ValueError: no support pairs, an image without its mask (or a mask without its image),
            a mask whose size differs from its image, an unreadable file, or no query images.
            The message names the file.
    """
    if not os.path.isdir(task_dir):
        raise FileNotFoundError(f"--fine-tune-task {task_dir!r} is not a directory.")
    support_dir, query_dir = os.path.join(task_dir, "support"), os.path.join(task_dir, "query")
    for folder, what in ((support_dir, "support/<n>.jpg + <n>.png pairs"),
                         (query_dir, "query/*.jpg images")):
        if os.path.islink(folder) and not os.path.exists(folder):
            raise FileNotFoundError(f"{folder!r} is a symbolic link to {os.readlink(folder)!r}, "
                                    f"which leads nowhere (a missing target or a loop); make it "
                                    f"a folder of {what}.")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder!r} is missing: --fine-tune-task expects {what}.")

    images = _files(support_dir, SUPPORT_IMAGE_EXTS)
    masks = _files(support_dir, (MASK_EXT,))
    for stem, path in images.items():
        if stem not in masks:
            raise ValueError(f"Support image {path!r} has no mask: add "
                             f"{os.path.join(support_dir, stem + MASK_EXT)!r}.")
    for stem, path in masks.items():
        if stem not in images:
            raise ValueError(f"Support mask {path!r} has no image: add "
                             f"{os.path.join(support_dir, stem + '.jpg')!r}.")
    if not images:
        raise ValueError(f"No support pairs in {support_dir!r}: expected <n>.jpg images, each "
                         f"with its <n>.png mask.")

    support_images, support_masks = [], []
    for stem, image_path in images.items():
        image, mask = read_pair(image_path, masks[stem])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"Mask {masks[stem]!r} is {mask.shape[1]}x{mask.shape[0]} but its "
                             f"image {image_path!r} is {image.shape[1]}x{image.shape[0]}; "
                             f"they must have the same size.")
        support_images.append(image)
        support_masks.append(mask)

    queries = _files(query_dir, SUPPORT_IMAGE_EXTS)
    pngs = _files(query_dir, (MASK_EXT,))
    query_mask_paths = {stem: p for stem, p in pngs.items() if stem in queries}
    queries.update({stem: p for stem, p in pngs.items() if stem not in queries})
    queries = dict(sorted(queries.items(), key=lambda item: _natural_key(item[0])))
    if not queries:
        raise ValueError(f"No query images in {query_dir!r}: expected *.jpg (or .jpeg/.png).")
    originals, query_masks = [], []
    for stem, path in queries.items():
        if stem in query_mask_paths:
            original, mask = read_pair(path, query_mask_paths[stem])
        else:
            original, mask = read_rgb(path), None
        originals.append(original)
        if mask is not None and mask.shape != original.shape[:2]:
            raise ValueError(f"Mask {query_mask_paths[stem]!r} is {mask.shape[1]}x{mask.shape[0]}"
                             f" but its query {path!r} is {original.shape[1]}x"
                             f"{original.shape[0]}; they must have the same size.")
        query_masks.append(mask)
    return UserTask(
        name=os.path.basename(os.path.normpath(task_dir)),
        support_images=tuple(support_images), support_masks=tuple(support_masks),
        support_paths=tuple(images.values()), query_images=tuple(originals),
        query_paths=tuple(queries.values()), query_masks=tuple(query_masks))
