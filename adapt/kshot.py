"""k-shot learning curves (`--run_k_shot_learning_curves_experiment`).

The experiment of ml4ai/mliis meta_learners/supervised_reptile/supervised_reptile/eval.py.

For each task and repetition, the class's images are split once into `num_query` held-out test
images and a pool of training candidates; for every k the first k candidates are the support
set (so the k-shot support sets are nested), the init is adapted and the test images scored.
Steps per k: `--k_shot_iter_range` if given; else below k = 10 the evaluation's --eval-iters, and
from k = 10 the best step count of an early-stopping run that trains on k - int(0.2 k) of the
support images and scores the other int(0.2 k) (min 1 step, up to --k_shot_max_steps, patience
50). The final adaptation then uses all k images.

Every model (the meta-learned init, the joint-training baseline) sees the same splits,
mini-batches and augmentations: each (task, repetition, k) has its own generator.

Fixes against the reference: k values above what a class can supply are dropped (the reference
needed 420 images per class), results are appended per row into the run directory instead of
being overwritten in the working directory, and each model's rows are labelled.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from adapt.config import KShotConfig
from adapt.evaluate import evaluate_task
from adapt.uho_objective import early_stopping_adapt
from data.episodes import Episode
from data.tasks import ClassData
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.streams import STREAM_KSHOT
from storage import atomic
from report.plots import plot_k_shot_curves

CSV_NAME = "k-shot-results.csv"
PLOT_NAME = "k-shot-results.png"
COLUMNS = ("model", "task", "repetition", "k", "steps", "mIoU")
EARLY_STOPPING_FROM_K = 10
VALIDATION_FRACTION = 0.2


def usable_k(k_values: Sequence[int], num_images: int, num_query: int) -> tuple[list[int], int]:
    """The k values a class can supply and the number of test images used.

    Args:
        k_values: requested k values.
        num_images: images of the class.
        num_query: requested held-out test images.

    Returns:
        (k values <= num_images - q, q) with q = min(num_query, num_images // 2): at most half
        of a small class is held out (FSS-1000's 10 images give 5 test images and k in {1, 5}).

    Raises:
        ValueError: the class cannot supply even the smallest k plus one test image.
    """
    q = min(num_query, max(1, num_images // 2))
    if num_images - q < min(k_values):
        raise ValueError(f"A class with {num_images} images cannot give k = {min(k_values)} "
                         f"support images plus a test image; lower --k_shot_range.")
    return [k for k in k_values if k <= num_images - q], q


def _steps_for(loop: InnerLoop, name: str, images: np.ndarray, masks: np.ndarray, k: int,
               index: int, base: Adaptation, cfg: KShotConfig,
               rng: np.random.Generator, transductive: bool) -> int:
    if cfg.k_shot_iter_range is not None:
        return int(cfg.k_shot_iter_range[index])
    if k < EARLY_STOPPING_FROM_K:
        return base.steps
    num_val = int(VALIDATION_FRACTION * k)
    episode = Episode(support_images=images[:k - num_val], support_masks=masks[:k - num_val],
                      query_images=images[k - num_val:k], query_masks=masks[k - num_val:k])
    steps, _ = early_stopping_adapt(loop, name, episode, base, rng, max_steps=cfg.max_steps,
                                    min_steps=1, patience=cfg.patience,
                                    transductive=transductive)
    return steps


def run_k_shot_experiment(loops: Mapping[str, InnerLoop], tasks: Mapping[str, ClassData],
                          names: Sequence[str], base: Adaptation, cfg: KShotConfig, *,
                          repetitions: int, seed: int, out_dir: str, transductive: bool = True
                          ) -> dict[str, dict[int, list[float]]]:
    """Adapt each model for every k on every task; write the CSV and the plot as it goes.

    Args:
        loops: model label -> its inner loop (e.g. {"meta-learned": ..., "joint-training
            baseline": ...}).
        tasks: class name -> ClassData.
        names: the classes to run (e.g. the meta-test split).
        base: the evaluation's adaptation (its steps are the k < 10 count).
        cfg: k values, iteration table, test images, early-stopping bound.
        repetitions: splits per class (--eval-samples).
        seed: run seed.
        out_dir: where k-shot-results.csv / .png go (the CSV is started afresh each run).
        transductive: query prediction mode.

    Returns:
        label -> {k: [IoU per (task, repetition)]}.
    """
    if not names:
        raise ValueError("The k-shot experiment needs at least one class.")
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, CSV_NAME)
    curves: dict[str, dict[int, list[float]]] = {label: {} for label in loops}
    with atomic.naming(csv_path), open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for task_index, name in enumerate(names):
            class_data = tasks[name]
            ks, num_query = usable_k(cfg.k_values, len(class_data), cfg.num_query)
            for repetition in range(repetitions):
                order = np.random.default_rng(
                    [seed, STREAM_KSHOT, repetition, task_index]).permutation(len(class_data))
                test, pool = order[:num_query], order[num_query:]
                images, masks = class_data.images[pool], class_data.masks[pool]
                for label, loop in loops.items():
                    for k in ks:
                        index = list(cfg.k_values).index(k)
                        rng = np.random.default_rng([seed, STREAM_KSHOT, repetition, task_index,
                                                     k])
                        steps = _steps_for(loop, name, images, masks, k, index, base, cfg, rng,
                                           transductive)
                        episode = Episode(support_images=images[:k], support_masks=masks[:k],
                                          query_images=class_data.images[test],
                                          query_masks=class_data.masks[test])
                        score = evaluate_task(loop, name, episode,
                                              dataclasses.replace(base, steps=steps), rng,
                                              transductive=transductive, repetition=repetition)
                        curves[label].setdefault(k, []).append(score.iou)
                        writer.writerow([label, name, repetition, k, steps, repr(score.iou)])
                        f.flush()
                        logging.info(f"k-shot {label} {name} rep {repetition} k={k}: {steps} "
                                     f"steps, IoU {score.iou:.4f}")
    plot_k_shot_curves(curves, os.path.join(out_dir, PLOT_NAME))
    return curves
