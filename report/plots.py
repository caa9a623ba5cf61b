"""PNG plots of the UHO search and of the k-shot learning curves.

Figures are built with `matplotlib.figure.Figure` (no pyplot), so nothing global is left open
between calls (the reference leaked a figure per prediction, ml4ai/mliis utils/viz.py), and written
to
a temporary name first, then renamed, so a crash never leaves a half-written PNG.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from storage import atomic


def _save(fig: Figure, path: str) -> str:
    atomic.save_figure(fig, path, dpi=100, bbox_inches="tight")
    return path


def uho_config_summary(rows: Sequence, median_mode: bool = False) -> list[dict]:
    """One entry per measured configuration: its lr, mean IoU and median best step count.

    Args:
        rows: UHO rows (adapt.uho_csv.UHORow, any order).
        median_mode: take the IoU from the `median_steps` rows (the objective under
            --eval_tasks_with_median_early_stopping_iterations).

    Returns:
        list of dicts with keys round, config, lr, mean_iou, steps, in first-seen order.
    """
    kind = "median_steps" if median_mode else "early_stopping"
    configs: dict[tuple[int, int], list] = {}
    for r in rows:
        configs.setdefault((r.round, r.config), []).append(r)
    out = []
    for (round_index, config_index), rs in configs.items():
        ious = [r.iou for r in rs if r.kind == kind]
        steps = [r.best_num_steps for r in rs if r.kind == "early_stopping"]
        if not ious or not steps:
            continue
        out.append({"round": round_index, "config": config_index, "lr": rs[0].lr,
                    "mean_iou": float(np.nanmean(ious)), "steps": int(np.median(steps))})
    return out


def plot_uho_search(rows: Sequence, path: str, median_mode: bool = False) -> str:
    """Scatter of mean val IoU against lr (log axis), coloured by the median best step count.

    Args:
        rows: UHO rows of the search.
        path: PNG to write.
        median_mode: see uho_config_summary.

    Returns:
        path.

    Raises:
        ValueError: no complete configuration to plot.
    """
    summary = uho_config_summary(rows, median_mode)
    if not summary:
        raise ValueError("plot_uho_search: no measured configuration to plot")
    lr = np.array([s["lr"] for s in summary])
    iou = np.array([s["mean_iou"] for s in summary])
    steps = np.array([s["steps"] for s in summary])
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    points = ax.scatter(lr, iou, c=steps, cmap="viridis", s=36, edgecolors="k", linewidths=0.4)
    best = int(np.nanargmax(iou))
    ax.scatter([lr[best]], [iou[best]], marker="*", s=260, facecolors="none", edgecolors="r",
               linewidths=1.5, label=f"best: lr={lr[best]:.3g}, steps={steps[best]}")
    ax.set_xscale("log")
    ax.set_xlabel("inner learning rate")
    ax.set_ylabel("mean val IoU")
    ax.set_title(f"UHO search: {len(summary)} configurations")
    ax.legend(loc="best", fontsize=8)
    fig.colorbar(points, ax=ax, label="median best step count")
    return _save(fig, path)


def plot_k_shot_curves(curves: Mapping[str, Mapping[int, Sequence[float]]], path: str) -> str:
    """Mean IoU against k (log axis) per model, with a band of +/- one standard deviation.

    Args:
        curves: model label (e.g. "meta-learned", "joint-training baseline") -> {k: [IoU per
            task and repetition]}.
        path: PNG to write.

    Returns:
        path.

    Raises:
        ValueError: no curve has a point.
    """
    if not any(curves.values()):
        raise ValueError("plot_k_shot_curves: nothing to plot")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for label, per_k in curves.items():
        ks = sorted(per_k)
        if not ks:
            continue
        mean = np.array([np.nanmean(per_k[k]) for k in ks])
        std = np.array([np.nanstd(per_k[k]) for k in ks])
        ax.plot(ks, mean, marker="o", label=label)
        ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    # Label exactly the measured k values ("5", not "5x10^0").
    measured = sorted({k for per_k in curves.values() for k in per_k})
    ax.set_xticks(measured, [str(k) for k in measured])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("k (labelled support images)")
    ax.set_ylabel("mean query IoU")
    ax.set_title("k-shot learning curves")
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _curve_panels(title: str, x_label: str, miou: Mapping[str, tuple], loss: Mapping[str, tuple],
                  path: str) -> str:
    """Two panels, mean IoU and loss, each a few labelled (x, y) curves (NaN points dropped)."""
    fig = Figure(figsize=(10, 4))
    for position, (name, curves) in enumerate((("mean IoU", miou), ("loss", loss)), start=1):
        ax = fig.add_subplot(1, 2, position)
        for label, (x, y) in curves.items():
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            ok = ~np.isnan(y)
            if ok.any():
                ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 60 else None, label=label)
        ax.set(xlabel=x_label, ylabel=name, title=f"{title}: {name}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def epoch_means(meta_iter: np.ndarray, values: np.ndarray, tasks_per_epoch: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch means of per-task values: tasks 1..n are epoch 1, n+1..2n epoch 2, ...

    Args:
        meta_iter: tasks completed at each row (row 0, before training, has no value).
        values: the value of each row (NaN where there is none).
        tasks_per_epoch: n.

    Returns:
        (epoch numbers with at least one value, their means).
    """
    ok = ~np.isnan(values) & (meta_iter > 0)
    epoch = (meta_iter[ok].astype(np.int64) - 1) // tasks_per_epoch + 1
    numbers = np.unique(epoch)
    return numbers, np.array([values[ok][epoch == e].mean() for e in numbers])


def plot_phase_curves(rows: Sequence[Mapping[str, float]], out_dir: str, phase: str, *,
                      tasks_per_epoch: int = 1, val_label: str = "val") -> list[str]:
    """Mean IoU and loss per epoch of an MTL phase, as MTL-Segmentation reports them.

    `pre_train` writes pre_train_curves.png (val mIoU; train and val loss per epoch).
    `meta_train` writes meta_train_curves.png (train-task mIoU after adaptation; query loss,
    per task and its epoch mean) and meta_val_curves.png (val-task mIoU and query loss after
    adaptation, per epoch).

    Args:
        rows: the phase's training_log.csv rows (report.logs.read_log).
        out_dir: the phase folder.
        phase: "pre_train" or "meta_train".
        tasks_per_epoch: meta_iter units per epoch (--num_batch for meta_train, 1 for pre_train).
        val_label: name of the held-out split ("val", or "test" without val classes).

    Returns:
        the PNG paths written.
    """
    def column(key):
        return np.array([r.get(key, np.nan) for r in rows], np.float64)

    epoch = column("meta_iter") / tasks_per_epoch
    if phase == "pre_train":
        return [_curve_panels("pre-train", "epoch",
                              {f"{val_label} mIoU": (epoch, column("val_miou"))},
                              {"train loss": (epoch, column("loss")),
                               f"{val_label} loss": (epoch, column("val_loss"))},
                              os.path.join(out_dir, "pre_train_curves.png"))]
    if phase != "meta_train":
        raise ValueError(f"plot_phase_curves: phase must be pre_train or meta_train. "
                         f"Received: {phase!r}")
    loss = column("loss")
    epochs, epoch_loss = epoch_means(column("meta_iter"), loss, tasks_per_epoch)
    train = _curve_panels("meta-train", "epoch",
                          {"train tasks mIoU": (epoch, column("train_miou"))},
                          {"query loss per task": (epoch, loss),
                           "epoch mean": (epochs, epoch_loss)},
                          os.path.join(out_dir, "meta_train_curves.png"))
    val = _curve_panels(f"meta-{val_label}", "epoch",
                        {f"{val_label} tasks mIoU": (epoch, column("val_miou"))},
                        {f"{val_label} query loss": (epoch, column("val_loss"))},
                        os.path.join(out_dir, f"meta_{val_label}_curves.png"))
    return [train, val]
