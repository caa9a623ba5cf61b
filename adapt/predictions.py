"""SAVE_PREDICTIONS: one side-by-side PNG per evaluated query (image | ground truth | prediction).

The reference wrote only a prediction overlay, into `./predictions/` with the raw task name in
the file name, overwriting earlier repetitions (ml4ai/mliis utils/viz.py). Here each query gets
three
panels and a title with the task and its IoU, under a configurable directory, with a file name
that is safe for any class name (slug + short hash, so "a/b" and "a_b" stay distinct).
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata

import numpy as np
from matplotlib.figure import Figure

from storage import atomic

_GT_COLOUR = np.array([0, 200, 0], np.float32)
_PRED_COLOUR = np.array([255, 64, 0], np.float32)
_ALPHA = 0.5


def safe_name(name: str, max_len: int = 60) -> str:
    """A file-name fragment for any string: ASCII slug plus 8 hex digits of its SHA-1.

    Args:
        name: e.g. a class name ("hot dog", "a/b", "Ärger", "..").
        max_len: longest slug kept before the hash.

    Returns:
        e.g. "hot_dog-3f2a9c1b"; only [A-Za-z0-9._-], never starting with a dot.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._-")[:max_len] or "task"
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


def overlay(image: np.ndarray, mask: np.ndarray, colour=_PRED_COLOUR, alpha: float = _ALPHA
            ) -> np.ndarray:
    """Blend a colour into the image where the mask is on.

    Args:
        image: uint8 (H, W, 3).
        mask: (H, W), nonzero = foreground.
        colour: RGB of the overlay.
        alpha: overlay opacity.

    Returns:
        uint8 (H, W, 3).
    """
    out = image.astype(np.float32)
    on = np.asarray(mask) > 0
    out[on] = (1 - alpha) * out[on] + alpha * np.asarray(colour, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def save_prediction_png(out_dir: str, task_name: str, index: int, image: np.ndarray,
                        mask: np.ndarray, prediction: np.ndarray, iou: float,
                        repetition: int = 0) -> str:
    """Write image | ground truth | prediction for one query image.

    Args:
        out_dir: directory (created if missing).
        task_name: the class; shown in the title, slugged into the file name.
        index: query index within the episode.
        image: uint8 or float (S, S, 3) in 0..255.
        mask: (S, S) ground truth in {0, 1}.
        prediction: (S, S) thresholded prediction in {0, 1}.
        iou: this query's IoU, shown in the title.
        repetition: evaluation repetition, so repetitions do not overwrite each other.

    Returns:
        Path of the PNG: `<out_dir>/<safe task>_rep<r>_query<i>.png`.
    """
    image = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    fig = Figure(figsize=(9.0, 3.4))
    panels = ((image, "image"), (overlay(image, mask, _GT_COLOUR), "ground truth"),
              (overlay(image, prediction), "prediction"))
    for i, (panel, label) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(panel)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{task_name}  |  query {index}  |  IoU {iou:.3f}", fontsize=11)
    path = os.path.join(out_dir, f"{safe_name(task_name)}_rep{repetition}_query{index}.png")
    return atomic.save_figure(fig, path, dpi=80, bbox_inches="tight")
