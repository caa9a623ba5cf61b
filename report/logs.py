"""Meta-training logs in the run directory: a CSV, TensorBoard scalars and a PNG of the curves.

* `DIR/training_log.csv`: one row per meta-iteration, keyed by meta_iter = meta-iterations
  completed (1..meta_iters; row 0 is the evaluation of the initial weights), with meta_step_size,
  loss, seconds, plus train_miou / val_miou / val_loss on the rows where the periodic evaluation
  ran (val_loss: the held-out tasks' query loss after adaptation). On
  resume from step s the rows after s are dropped first, so a resumed run's log matches an
  uninterrupted one's.
* `DIR/tensorboard/`: scalars loss, meta_step_size, train_mIoU, val_mIoU.
* `DIR/training_curves.png`: mIoU (train/val) and loss against meta-iterations (matplotlib
  Figure with the Agg canvas; no pyplot state).
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from tensorflow.core.framework import summary_pb2

from storage import atomic

# tf.summary.scalar lives in the tensorboard package, which TensorFlow no longer installs; the core
# op tf.summary.write with the "scalars" plugin metadata writes the identical event.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
FIELDS = ("meta_iter", "meta_step_size", "loss", "train_miou", "val_miou", "seconds", "val_loss")
CSV_NAME = "training_log.csv"
PLOT_NAME = "training_curves.png"


def read_log(path: str) -> list[dict]:
    """Rows of a training CSV, numbers parsed (empty cells -> NaN).

    Args:
        path: the CSV file.

    Returns:
        list of dicts keyed by FIELDS.
    """
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()}
                for row in csv.DictReader(f)]


class TrainingLog:
    """Appends rows to the CSV and TensorBoard; truncates rows a resumed run will redo.

    Args:
        run_dir: the run directory (--checkpoint).
        start_step: completed meta-iterations at start (rows after it are dropped).
    """

    def __init__(self, run_dir: str, start_step: int = 0):
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir = run_dir
        self.csv_path = os.path.join(run_dir, CSV_NAME)
        kept = [r for r in read_log(self.csv_path) if r["meta_iter"] <= start_step] \
            if start_step > 0 else []
        tmp = f"{self.csv_path}.tmp"
        with atomic.naming(self.csv_path), open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            for row in kept:
                writer.writerow(_format(row))
        os.replace(tmp, self.csv_path)
        self._writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))

    def log(self, meta_iter: int, *, meta_step_size: float, loss: float | None, seconds: float,
            train_miou: float | None = None, val_miou: float | None = None,
            val_loss: float | None = None) -> None:
        """Append one meta-iteration's numbers.

        Args:
            meta_iter: meta-iterations completed (0 = the initial weights).
            meta_step_size: epsilon used.
            loss: mean inner-loop loss (None for row 0).
            seconds: wall time of the meta-iteration.
            train_miou: periodic train-task mIoU (None when not evaluated).
            val_miou: periodic val/test-task mIoU (None when not evaluated).
            val_loss: periodic val/test-task query loss after adaptation (None when not
                evaluated).
        """
        row = {"meta_iter": meta_iter, "meta_step_size": meta_step_size, "loss": loss,
               "train_miou": train_miou, "val_miou": val_miou, "seconds": seconds,
               "val_loss": val_loss}
        with atomic.naming(self.csv_path), open(self.csv_path, "a", newline="",
                                                encoding="utf-8") as f:
            csv.DictWriter(f, FIELDS).writerow(_format(row))
        scalars = {"loss": loss, "meta_step_size": meta_step_size, "train_mIoU": train_miou,
                   "val_mIoU": val_miou, "val_loss": val_loss}
        with self._writer.as_default():
            for tag, value in scalars.items():
                if value is not None:
                    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=meta_iter,
                                     metadata=_SCALAR_METADATA)

    def close(self) -> None:
        """Flush TensorBoard events."""
        self._writer.flush()
        self._writer.close()


def _format(row: dict) -> dict:
    out = {}
    for k in FIELDS:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[k] = ""
        elif k == "meta_iter":
            out[k] = str(int(v))
        else:
            out[k] = f"{float(v):.6g}"
    return out


def plot_training_curves(csv_path: str, png_path: str, val_label: str = "val") -> str:
    """Two panels: train/val mIoU and inner-loop loss against meta-iterations.

    Args:
        csv_path: the training CSV.
        png_path: output PNG (written to a temp name, then renamed).
        val_label: legend label of the held-out curve ("val" or "test").

    Returns:
        png_path.
    """
    rows = read_log(csv_path)
    it = np.array([r["meta_iter"] for r in rows])
    fig = Figure(figsize=(10, 4))
    ax_iou, ax_loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, label in (("train_miou", "train tasks"), ("val_miou", f"{val_label} tasks")):
        y = np.array([r[key] for r in rows])
        ok = ~np.isnan(y)
        if ok.any():
            ax_iou.plot(it[ok], y[ok], marker="o", label=label)
    ax_iou.set(xlabel="meta-iteration", ylabel="mean IoU after adaptation", title="mIoU")
    ax_iou.grid(alpha=0.3)
    if ax_iou.lines:
        ax_iou.legend()
    loss = np.array([r["loss"] for r in rows])
    ok = ~np.isnan(loss) if len(loss) else np.zeros(0, bool)
    if ok.any():
        it_loss, loss = it[ok], loss[ok]
        ax_loss.plot(it_loss, loss, alpha=0.35, label="per meta-iteration")
        window = max(1, len(loss) // 20)
        if window > 1:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax_loss.plot(it_loss[window - 1:], smooth, label=f"moving mean ({window})")
        ax_loss.legend()
    ax_loss.set(xlabel="meta-iteration", ylabel="inner-loop loss", title="loss")
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    return atomic.save_figure(fig, png_path, dpi=90)
