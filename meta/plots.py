"""PNG plots of the UHO search and of the k-shot learning curves.

Figures are built with `matplotlib.figure.Figure` (no pyplot), so nothing global is left open
between calls (the reference leaked a figure per prediction, reference-spec 5.3), and written to
a temporary name first, then renamed, so a crash never leaves a half-written PNG.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from meta.uho_csv import UHORow


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def uho_config_summary(rows: Sequence[UHORow], median_mode: bool = False) -> list[dict]:
    """One entry per measured configuration: its lr, mean IoU and median best step count.

    Args:
        rows: UHO rows (any order).
        median_mode: take the IoU from the `median_steps` rows (the objective under
            --eval_tasks_with_median_early_stopping_iterations).

    Returns:
        list of dicts with keys round, config, lr, mean_iou, steps, in first-seen order.
    """
    kind = "median_steps" if median_mode else "early_stopping"
    configs: dict[tuple[int, int], list[UHORow]] = {}
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


def plot_uho_search(rows: Sequence[UHORow], path: str, median_mode: bool = False) -> str:
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
