"""Outputs of `--fine-tune-task`: masks at each query's original size, overlays, a summary.

Everything is written into a hidden temporary sibling folder and swapped in only when complete
(`storage.atomic.write_whole`; the converter does the same), so an interrupted or failed run never leaves half a result and a
rerun replaces the previous one whole.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from adapt.predictions import overlay
from data.user_task import UserTask
from storage import atomic


def probability_at_size(foreground: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one (S, S) foreground-probability map to (height, width), float32.

    Resizing the probabilities before thresholding gives smoother edges than resizing a
    thresholded mask.
    """
    return np.asarray(Image.fromarray(np.asarray(foreground, np.float32), mode="F").resize(
        (width, height), Image.BILINEAR))


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
