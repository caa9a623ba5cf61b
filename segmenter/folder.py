"""A task folder of your own images (`--fine-tune-task DIR`): its examples, and where it writes.

Layout:
    DIR/support/   the examples, any size, in one of these forms:
                   <n>.jpg (or .jpeg) with its mask <n>.png (0 = background, object > 127, or
                     {0, 1}; the converter's mask rule);
                   images with one COCO instances JSON (RLE or polygons) beside them;
                   images with one Label Studio JSON export (brush or polygon labels);
                   images with a YOLO-seg labels/ folder (labels/<stem>.txt).
    DIR/query/     the images to segment, at any depth (or --query_dir TREE).

Outputs: the masks in DIR/predictions (or --masks_dir), mirroring the images' tree
(segmenter.tree, segmenter.outputs), and the adapted weights in DIR/fine_tuned_checkpoint (or
--fine-tuned-checkpoint), loadable with `from_checkpoint` and `--pretrained --checkpoint`.

Everything is read and checked (`load_user_task`, `check_outputs`) before anything is written,
so a bad input writes nothing, and nothing the user owns is replaced.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from data.annotations import read_coco, read_yolo
from data.label_studio_format import read_label_studio_export
from errors import UserError
from segmenter.images import read_pair, read_rgb
from segmenter.tree import IMAGE_EXTS, natural_key
from storage import atomic, checkpoint

SUPPORT_IMAGE_EXTS = (".jpg", ".jpeg")
MASK_EXT = ".png"
DEFAULT_OUT_NAME = "predictions"
DEFAULT_WEIGHTS_NAME = "fine_tuned_checkpoint"


@dataclass(frozen=True)
class UserTask:
    """A task folder's examples, read and checked.

    Attributes:
        name: the folder's base name (the object's name in COCO and Label Studio files).
        folder: the task folder.
        support_images: the k example images as displayed, uint8 (H_i, W_i, 3).
        support_masks: their masks, uint8 (H_i, W_i) in {0, 1}.
        support_paths: the k example image files.
        source: how the examples were given (PNG masks, or the annotation file).
    """

    name: str
    folder: str
    support_images: tuple[np.ndarray, ...]
    support_masks: tuple[np.ndarray, ...]
    support_paths: tuple[str, ...]
    source: str


def _visible(folder: str) -> list[str]:
    return sorted((e for e in os.listdir(folder) if not e.startswith(".")), key=natural_key)


def _files(folder: str, exts: tuple[str, ...]) -> dict[str, str]:
    """stem -> path of the visible files in `folder` whose extension is in `exts`."""
    out: dict[str, str] = {}
    for entry in _visible(folder):
        stem, ext = os.path.splitext(entry)
        path = os.path.join(folder, entry)
        if ext.lower() not in exts or not os.path.isfile(path):
            continue
        if stem in out:
            raise UserError(f"Two files share the stem {stem!r} in {folder!r}: "
                            f"{os.path.basename(out[stem])!r} and {entry!r}. Keep one.")
        out[stem] = path
    return out


def _refuse_subfolders(folder: str, allowed=()) -> None:
    nested = [e for e in _visible(folder)
              if os.path.isdir(os.path.join(folder, e)) and e not in allowed]
    if nested:
        raise UserError(f"{os.path.join(folder, nested[0])!r} is a folder: the examples are the "
                        f"files of {folder!r} itself (their folders are not read); move them "
                        f"up or out.")


def _png_pairs(support_dir: str) -> tuple[list, list, list]:
    images = _files(support_dir, SUPPORT_IMAGE_EXTS)
    masks = _files(support_dir, (MASK_EXT,))
    for stem, path in images.items():
        if stem not in masks:
            raise UserError(f"Support image {path!r} has no mask: add "
                            f"{os.path.join(support_dir, stem + MASK_EXT)!r}.")
    for stem, path in masks.items():
        if stem not in images:
            raise UserError(f"Support mask {path!r} has no image: add "
                            f"{os.path.join(support_dir, stem + '.jpg')!r}.")
    pairs = [read_pair(path, masks[stem]) for stem, path in images.items()]
    for (image, mask), (stem, path) in zip(pairs, images.items()):
        if mask.shape != image.shape[:2]:
            raise UserError(f"Mask {masks[stem]!r} is {mask.shape[1]}x{mask.shape[0]} but its "
                            f"image {path!r} is {image.shape[1]}x{image.shape[0]}; they must "
                            f"have the same size.")
    return [p[0] for p in pairs], [p[1] for p in pairs], list(images.values())


def _image_for(support_dir: str, name: str, where: str) -> str:
    """The file an annotation names: by its base name, or without Label Studio's upload prefix
    (`<8 hex>-photo.jpg`)."""
    base = os.path.basename(name.replace("\\", "/"))
    for candidate in (base, base.split("-", 1)[-1]):
        path = os.path.join(support_dir, candidate)
        if os.path.isfile(path):
            return path
    raise UserError(f"{where} names the image {name!r}, which is not in {support_dir!r}; put "
                    f"the image there (as {base!r}).")


def _checked(image: np.ndarray, mask: np.ndarray, path: str, source: str) -> np.ndarray:
    if mask.shape != image.shape[:2]:
        raise UserError(f"{source}: the mask of {path!r} is {mask.shape[1]}x{mask.shape[0]} but "
                        f"the image is {image.shape[1]}x{image.shape[0]} as displayed; annotate "
                        f"it again on this image.")
    return mask


def _annotated(support_dir: str) -> tuple[list, list, list, str] | None:
    """Examples from an annotation file or a YOLO labels/ folder in the support folder."""
    jsons = [e for e in _visible(support_dir) if e.lower().endswith(".json")]
    if len(jsons) > 1:
        raise UserError(f"{support_dir!r} holds {len(jsons)} annotation files ({jsons[:3]}); "
                        f"keep one (COCO instances or a Label Studio export).")
    images, masks, paths = [], [], []
    if jsons:
        path = os.path.join(support_dir, jsons[0])
        try:
            with open(path, encoding="utf-8") as f:
                is_coco = isinstance(json.load(f), dict)
        except (OSError, ValueError) as e:
            raise UserError(f"Cannot read annotation file {path!r} ({e}); export it again.") \
                from e
        source = f"COCO file {path}" if is_coco else f"Label Studio export {path}"
        if is_coco:
            named = [(item.name, item.mask) for item in read_coco(path)]
        else:
            tasks = read_label_studio_export(path)
            named = [(task.image, task) for task in tasks]
        for name, mask in named:
            image_path = _image_for(support_dir, name, source)
            image = read_rgb(image_path)
            mask = mask if isinstance(mask, np.ndarray) else mask.mask(*image.shape[:2])
            images.append(image)
            masks.append(_checked(image, mask, image_path, source))
            paths.append(image_path)
        return images, masks, paths, source
    if os.path.isdir(os.path.join(support_dir, "labels")):
        files = _files(support_dir, IMAGE_EXTS)
        images = [read_rgb(path) for path in files.values()]
        sizes = {os.path.basename(path): image.shape[:2]
                 for path, image in zip(files.values(), images)}
        masks = [item.mask for item in read_yolo(support_dir, sizes)]
        return images, masks, list(files.values()), f"YOLO-seg labels in {support_dir}"
    return None


def load_user_task(task_dir: str) -> UserTask:
    """Read and check DIR/support's examples (module docstring).

    Args:
        task_dir: the user's task folder.

    Returns:
        UserTask.

    Raises:
        UserError: the folder or DIR/support is missing, no examples, an image without its mask
            (or a mask without its image), sizes that differ, an unreadable file, a subfolder of
            support/; the message names the file.
    """
    if not os.path.isdir(task_dir):
        raise UserError(f"--fine-tune-task {task_dir!r} is not a directory.")
    support_dir = os.path.join(task_dir, "support")
    if os.path.islink(support_dir) and not os.path.exists(support_dir):
        raise UserError(f"{support_dir!r} is a symbolic link to {os.readlink(support_dir)!r}, "
                        f"which leads nowhere (a missing target or a loop); make it a folder of "
                        f"the examples.")
    if not os.path.isdir(support_dir):
        raise UserError(f"{support_dir!r} is missing: --fine-tune-task expects the examples "
                        f"there (<n>.jpg + <n>.png pairs, or images with an annotation file).")
    annotated = _annotated(support_dir)
    _refuse_subfolders(support_dir, allowed=("labels",) if annotated else ())
    if annotated is None:
        images, masks, paths = _png_pairs(support_dir)
        source = f"PNG masks in {support_dir}"
    else:
        images, masks, paths, source = annotated
    if not images:
        raise UserError(f"No examples in {support_dir!r}: expected <n>.jpg images, each with "
                        f"its <n>.png mask, or images with an annotation file.")
    return UserTask(name=os.path.basename(os.path.normpath(task_dir)),
                    folder=os.path.abspath(task_dir), support_images=tuple(images),
                    support_masks=tuple(masks), support_paths=tuple(paths), source=source)


# ---------------------------------------------------------------- where it writes
def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root + os.sep)


def check_outputs(task_dir: str | None, masks_dir: str, weights_dir: str | None) -> None:
    """Refuse, before any work, outputs that would replace something the user owns.

    The masks folder may hold anything: metaseg writes only its own files there and never
    deletes another's (segmenter.tree). The weights folder must be new, empty, or hold the
    fine-tuned weights of this task folder (never a meta-training run's, whose LAST it would
    redirect, nor another task's); it may not be inside the masks folder. Links out of the task
    folder are refused for the default output folders.

    Args:
        task_dir: --fine-tune-task DIR (None: segmenting with adapted weights, no fit).
        masks_dir: the masks folder.
        weights_dir: --fine-tuned-checkpoint, or DIR/fine_tuned_checkpoint (None: no fit).

    Raises:
        UserError: naming the path and what to do.
    """
    if os.path.lexists(masks_dir) and not os.path.isdir(masks_dir):
        raise UserError(f"The masks folder {masks_dir!r} is a file; pass a folder.")
    if task_dir is not None and masks_dir == os.path.join(task_dir, DEFAULT_OUT_NAME) and \
            os.path.islink(masks_dir) and not _inside(masks_dir, task_dir):
        raise UserError(f"The masks folder {masks_dir!r} is a symlink to "
                        f"{os.path.realpath(masks_dir)!r}, outside the task folder; remove the "
                        f"link or pass --masks_dir.")
    if weights_dir is not None:
        if _inside(weights_dir, masks_dir):
            raise UserError(f"--fine-tuned-checkpoint {weights_dir!r} is inside the masks "
                            f"folder {masks_dir!r}; keep the weights elsewhere.")
        if weights_dir == os.path.join(task_dir, DEFAULT_WEIGHTS_NAME) and \
                os.path.islink(weights_dir) and not _inside(weights_dir, task_dir):
            raise UserError(f"The weights folder {weights_dir!r} is a symlink to "
                            f"{os.path.realpath(weights_dir)!r}, outside the task folder; "
                            f"remove the link or pass --fine-tuned-checkpoint.")
        checkpoint.check_fine_tuned_dir(weights_dir, "--fine-tuned-checkpoint")
        owner = _weights_task(weights_dir)
        if owner is not None and os.path.realpath(owner) != os.path.realpath(task_dir):
            raise UserError(f"--fine-tuned-checkpoint {weights_dir!r} holds the weights adapted "
                            f"to the task folder {owner!r}; pass another folder for this "
                            f"task's.")
        atomic.check_writable(weights_dir, "--fine-tuned-checkpoint")
    atomic.check_writable(masks_dir, "--masks_dir")


def _weights_task(weights_dir: str) -> str | None:
    """The task folder whose weights a fine-tuned weights folder holds (None: unknown)."""
    try:
        return checkpoint.read_state(weights_dir).get("task_dir")
    except (FileNotFoundError, ValueError):
        return None
