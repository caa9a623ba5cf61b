"""A folder of your own images (`--fine-tune-task DIR`): read it, check where it writes, fit on its
support pairs, segment its queries, write the masks.

Layout:
    DIR/support/<n>.jpg (or .jpeg)  a support image, any size
    DIR/support/<n>.png             its mask, same size (L or RGB; 0 = background, object > 127,
                                    or {0, 1})
    DIR/query/*.jpg|jpeg|png        images to segment (no masks needed; a <n>.png beside a
                                    <n>.jpg query is read as its ground truth, for scoring)

Outputs:
* `DIR/predictions/<query stem>_mask.png` (0/255, the query's original size),
  `<query stem>_overlay.png` and `summary.json` (the init, every setting with its source,
  warnings, the foreground fraction of every query and the IoU of those with a ground-truth
  mask), swapped in whole (`storage.atomic.write_whole`);
* the adapted weights (`Segmenter.save`) in `--fine-tuned-checkpoint` (default
  `DIR/fine_tuned_checkpoint`), loadable with `--pretrained --checkpoint` and by
  `segmenter.from_checkpoint`.

Everything is read and checked (`load_user_task`, `check_outputs`) before anything is written, so
a bad input writes nothing, and nothing the user owns is replaced.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from adapt import iou
from adapt.predictions import overlay
from errors import UserError
from segmenter.api import Segmenter, check_weights_dir
from segmenter.images import read_pair, read_rgb
from storage import atomic

SUPPORT_IMAGE_EXTS = (".jpg", ".jpeg")
MASK_EXT = ".png"
DEFAULT_OUT_NAME = "predictions"
DEFAULT_WEIGHTS_NAME = "fine_tuned_checkpoint"
SUMMARY_FORMAT = "metaseg-fine-tune-task"  # marks a predictions folder as ours (summary.json)


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


# ---------------------------------------------------------------- where it writes
def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root + os.sep)


def _refuse_outside_link(path: str, task_dir: str, what: str) -> None:
    if os.path.islink(path) and not _inside(path, task_dir):
        raise UserError(f"{what} {path!r} is a symlink to {os.path.realpath(path)!r}, outside "
                        f"the task folder; remove the link or pass another output path.")


def _is_our_predictions(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and (summary.get("format") == SUMMARY_FORMAT or
                                          {"task", "queries", "schedule"} <= set(summary))


def check_outputs(task_dir: str, out_dir: str, weights_dir: str) -> None:
    """Refuse, before any work, output paths that would replace something the user owns.

    The predictions folder must be new, empty, or one this command wrote (its summary.json);
    the weights folder must be new, empty, or hold only fine-tuned checkpoints (never a
    meta-training run, whose LAST it would redirect). Links out of the task folder are refused.

    Args:
        task_dir: --fine-tune-task DIR.
        out_dir: the predictions folder (DIR/predictions).
        weights_dir: --fine-tuned-checkpoint, or DIR/fine_tuned_checkpoint.

    Raises:
        UserError: naming the path and what to do.
    """
    _refuse_outside_link(out_dir, task_dir, "The predictions folder")
    if os.path.lexists(out_dir):
        if os.path.islink(out_dir) or not os.path.isdir(out_dir):
            raise UserError(f"{out_dir!r} exists and is not a predictions folder written by "
                            f"--fine-tune-task; move it away (it is never replaced).")
        if os.listdir(out_dir) and not _is_our_predictions(out_dir):
            raise UserError(f"{out_dir!r} holds files this command did not write (no "
                            f"summary.json of --fine-tune-task); move them away.")
    if weights_dir == os.path.join(task_dir, DEFAULT_WEIGHTS_NAME):
        _refuse_outside_link(weights_dir, task_dir, "The weights folder")
    check_weights_dir(weights_dir, "--fine-tuned-checkpoint")
    # written after the adaptation: a folder that cannot take them is refused before it
    atomic.check_writable(task_dir, "--fine-tune-task")
    atomic.check_writable(weights_dir, "--fine-tuned-checkpoint")


# ---------------------------------------------------------------- the work
def segment_folder(seg: Segmenter, task: UserTask, *, out_dir: str, weights_dir: str,
                   progress=None) -> dict:
    """Fit on the support pairs, predict the queries, write masks, overlays, summary, weights.

    Args:
        seg: the loaded init.
        task: the validated folder.
        out_dir: folder for the masks, overlays and summary.json (replaced whole).
        weights_dir: folder for the adapted weights.
        progress: (done, total) callback of the adaptation steps.

    Returns:
        the summary written to summary.json.
    """
    losses = seg.fit(task.support_images, task.support_masks, progress=progress)
    masks = seg.predict(task.query_images)
    queries = []
    for path, mask, truth in zip(task.query_paths, masks, task.query_masks):
        entry = {"query": os.path.basename(path), "height": int(mask.shape[0]),
                 "width": int(mask.shape[1]), "foreground_fraction": float((mask > 0).mean())}
        if truth is not None:
            entry["iou"] = float(iou.iou_per_image((mask > 0)[None], truth[None])[0])
        queries.append(entry)
    scored = [q["iou"] for q in queries if "iou" in q]
    config = seg.settings.to_config()
    summary = {"task": task.name, "num_support": len(task.support_images),
               "steps": int(seg.steps_taken),
               "final_loss": float(losses[-1]) if len(losses) else None,
               "init": seg.init.path if seg.init else None,
               "init_trained_on": seg.init.trained_on() if seg.init else None,
               "schedule": config["adapt"], "model": config["model"], "loss": config["loss"],
               "sources": dict(seg.settings.sources), "warnings": list(seg.warnings),
               "queries": queries, "mean_iou": float(np.mean(scored)) if scored else None,
               "weights": os.path.abspath(weights_dir), "format": SUMMARY_FORMAT}
    write_user_predictions(task, masks, out_dir, summary)
    seg.save(weights_dir, task=task.name,
             support=[os.path.basename(p) for p in task.support_paths])
    return summary


def write_user_predictions(task: UserTask, masks: list[np.ndarray], out_dir: str,
                           summary: dict) -> list[str]:
    """Write `<stem>_mask.png` (0/255) and `<stem>_overlay.png` per query, plus summary.json.

    Args:
        task: the user's task (query paths and original images).
        masks: per query uint8 (H_i, W_i), nonzero = object, at original size.
        out_dir: destination folder; replaced whole.
        summary: JSON-serializable facts about the run (schedule, IoUs), written as summary.json.

    Returns:
        the mask paths, in query order (under out_dir).
    """
    out_dir = os.path.abspath(out_dir)
    paths = []

    def write(folder: str) -> None:
        os.makedirs(folder)  # the umask's mode
        for path, original, mask in zip(task.query_paths, task.query_images, masks):
            stem = os.path.splitext(os.path.basename(path))[0]
            Image.fromarray(np.where(mask > 0, np.uint8(255), np.uint8(0)), mode="L").save(
                os.path.join(folder, f"{stem}_mask.png"))
            Image.fromarray(overlay(original, mask)).save(
                os.path.join(folder, f"{stem}_overlay.png"))
            paths.append(os.path.join(out_dir, f"{stem}_mask.png"))
        with open(os.path.join(folder, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)

    atomic.write_whole(out_dir, write)
    return paths
