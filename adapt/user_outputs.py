"""Outputs of `--fine-tune-task`: masks at each query's original size, overlays, a summary.

Everything is written into a hidden temporary sibling folder and swapped in only when complete
(the converter does the same), so an interrupted or failed run never leaves half a result and a
rerun replaces the previous one whole.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from adapt.predictions import overlay
from storage import atomic
from data.user_task import UserTask


def probability_at_size(foreground: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one (S, S) foreground-probability map to (height, width), float32.

    Resizing the probabilities before thresholding gives smoother edges than resizing a
    thresholded mask.
    """
    return np.asarray(Image.fromarray(np.asarray(foreground, np.float32), mode="F").resize(
        (width, height), Image.BILINEAR))


def _swap_in(tmp_dir: str, out_dir: str) -> None:
    """Replace out_dir by tmp_dir (both on one file system)."""
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = atomic.temp_dir(parent, f".{os.path.basename(out_dir)}")  # the umask's mode
    try:
        paths = []
        for path, original, mask in zip(task.query_paths, task.query_images, masks):
            stem = os.path.splitext(os.path.basename(path))[0]
            Image.fromarray(np.where(mask > 0, np.uint8(255), np.uint8(0)), mode="L").save(
                os.path.join(tmp_dir, f"{stem}_mask.png"))
            Image.fromarray(overlay(original, mask)).save(
                os.path.join(tmp_dir, f"{stem}_overlay.png"))
            paths.append(os.path.join(out_dir, f"{stem}_mask.png"))
        with open(os.path.join(tmp_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        _swap_in(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return paths
