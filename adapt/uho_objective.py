"""The TF side of UHO: per-task early-stopping adaptation (the objective) and applying the result.

`early_stopping_adapt` is ml4ai/mliis
meta_learners/supervised_reptile/supervised_reptile/reptile.py on top of the meta engine:
`adapt.evaluate.
evaluate_task` adapts a val task (snapshot, compiled steps, restore) and its `on_step` hook scores
the query IoU after every step into an `EarlyStopper` (patience 50 by default), which ends the
adaptation and remembers the best step count. `run_uho` runs the GP search of `adapt.uho` with it
and writes the CSV, the plot and `uho_best.json` next to the checkpoints.

Every (val task, repetition) has its own generator keyed by (seed, STREAM_UHO, repetition, task):
all configurations are scored on the same episodes, mini-batches and augmentations, so the GP
compares configurations, not episode luck (common random numbers); a resumed search measures
exactly what the interrupted one would have.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from adapt import iou
from adapt.config import EvalConfig, UHOConfig
from adapt.early_stopping import EarlyStopper
from adapt.evaluate import evaluate_task, predict_queries
from adapt.uho import UHOResult, UpdateHyperparams, optimize_update_hyperparams
from adapt.uho_csv import results_csv_path
from data.episodes import Episode, sample_episode
from data.tasks import ClassData
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.streams import STREAM_UHO
from storage import atomic
from report.plots import plot_uho_search

BEST_NAME = "uho_best.json"
# The settings of an Adaptation a UHO configuration sets (update_schedule).
UHO_SETTINGS = ("learning_rate", "dropout_rate", "batch_size", "aug_rate", "steps")


def update_schedule(base: Adaptation, params: Mapping, steps: int) -> Adaptation:
    """The adaptation of one UHO configuration.

    Args:
        base: the flags' test-time adaptation (its optimizer and mini-batch settings).
        params: lr, drop_rate, aug_rate, inner_batch_size (adapt.uho.SEARCH_KEYS).
        steps: inner steps.

    Returns:
        base with learning_rate, dropout_rate, batch_size, aug_rate and steps replaced.
    """
    return dataclasses.replace(base, learning_rate=float(params["lr"]),
                               dropout_rate=float(params["drop_rate"]),
                               batch_size=int(params["inner_batch_size"]),
                               aug_rate=float(params["aug_rate"]), steps=int(steps))


def apply_update_hyperparams(base: Adaptation, best: UpdateHyperparams) -> Adaptation:
    """The final evaluation's adaptation of the UHO result (lr, steps, batch size, aug rate,
    head dropout).

    Args:
        base: the flags' test-time adaptation.
        best: UHO's choice.

    Returns:
        Adaptation.
    """
    return update_schedule(base, {"lr": best.lr, "drop_rate": best.drop_rate,
                                  "aug_rate": best.aug_rate,
                                  "inner_batch_size": best.inner_batch_size}, best.steps)


def early_stopping_adapt(loop: InnerLoop, name: str, episode: Episode,
                         adaptation: Adaptation, rng: np.random.Generator, *,
                         max_steps: int, min_steps: int = 0, patience: int = 50,
                         transductive: bool = True) -> tuple[int, float]:
    """Adapt up to max_steps, scoring the queries after every step (ml4ai/mliis
    meta_learners/supervised_reptile/supervised_reptile/reptile.py).

    Args:
        loop: the inner loop holding the init (left bit-identical afterwards).
        name: the task.
        episode: support and query pairs (the queries are the early-stopping set).
        adaptation: lr, batch, aug rate, dropout (its steps are replaced by max_steps).
        rng: mini-batches and augmentation seeds.
        max_steps: upper bound on steps.
        min_steps: steps that always run.
        patience: consecutive non-improving steps tolerated.
        transductive: how the queries are predicted (see adapt.evaluate.predict_queries).

    Returns:
        (best step count, query mean IoU at that step).
    """
    stopper = EarlyStopper(patience=patience, min_steps=min_steps)

    def on_step(steps_taken: int, loss: float) -> bool:
        predicted = iou.foreground(predict_queries(loop, episode.support_images,
                                                   episode.query_images, transductive))
        return stopper.update(float(np.mean(iou.iou_per_image(predicted, episode.query_masks))),
                              steps_taken)

    evaluate_task(loop, name, episode, dataclasses.replace(adaptation, steps=max_steps), rng,
                  transductive=transductive, on_step=on_step)
    return stopper.result()


def make_adapt_task(loop: InnerLoop, tasks: Mapping[str, ClassData], names: Sequence[str],
                    base: Adaptation, cfg: UHOConfig, evaluation: EvalConfig, *, seed: int,
                    stream: int = STREAM_UHO):
    """The `adapt_task(params, task, repetition, steps)` callable adapt.uho searches with.

    Args:
        loop: the inner loop holding the init.
        tasks: class name -> ClassData.
        names: the val classes (their order fixes the random keys).
        base: the flags' test-time adaptation.
        cfg: min_steps, max_steps, patience.
        evaluation: shots and num_query (the early-stopping set) per episode, transductive.
        seed: run seed.
        stream: random stream of these episodes.

    Returns:
        adapt_task: steps=None adapts with early stopping and returns (best steps, best IoU);
        steps=n adapts exactly n steps and returns (n, IoU).
    """
    index = {name: i for i, name in enumerate(names)}
    shots, num_query, transductive = evaluation.shots, evaluation.num_query, evaluation.transductive

    def adapt_task(params, task, repetition, steps):
        rng = np.random.default_rng([int(seed), int(stream), int(repetition), index[task]])
        episode = sample_episode(rng, tasks[task], shots, num_query)
        adaptation = update_schedule(base, params,
                                     steps if steps is not None else cfg.max_steps)
        if steps is None:
            return early_stopping_adapt(loop, task, episode, adaptation, rng,
                                        max_steps=cfg.max_steps, min_steps=cfg.min_steps,
                                        patience=cfg.patience, transductive=transductive)
        score = evaluate_task(loop, task, episode, adaptation, rng, transductive=transductive,
                              repetition=repetition)
        return int(steps), score.iou

    return adapt_task


def _spread_adapt(replicas, adapt_task_of):
    """adapt_many over replicas: item p on replica p % R, (steps, IoU) gathered everywhere."""
    per_loop = {id(run_loop): adapt_task_of(run_loop) for run_loop in replicas.loops}

    def adapt_many(params, items, steps):
        def run_item(run_loop, p):
            task, repetition = items[p]
            best_steps, value = per_loop[id(run_loop)](params, task, repetition, steps)
            high = np.float32(value)  # the float64 IoU as two float32 parts, ~1e-14 exact
            return np.array([best_steps, high, np.float32(value - float(high))], np.float32)
        rows = replicas.spread(len(items), run_item, 3) if items else np.zeros((0, 3))
        return [(int(round(float(r[0]))), float(r[1]) + float(r[2])) for r in rows]
    return adapt_many


def run_uho(loop: InnerLoop, tasks: Mapping[str, ClassData], val_names: Sequence[str],
            base: Adaptation, cfg: UHOConfig, evaluation: EvalConfig, *, seed: int,
            out_dir: str, replicas=None) -> UHOResult:
    """Search the update hyperparameters on the val classes; write CSV, plot and uho_best.json.

    Args:
        loop: the inner loop holding the (meta-learned) init.
        tasks: class name -> ClassData.
        val_names: the val classes.
        base: the flags' test-time adaptation (unsearched dimensions keep its values).
        cfg: the UHO config (repetitions: episodes per val class and configuration).
        evaluation: shots and num_query per val episode, transductive.
        seed: run seed.
        out_dir: the checkpoint directory (results file, plot, best config).
        replicas: a single-process `devices.distribute.Replicas` (--distribute mirrored): each
            configuration's val episodes are spread over its replicas' inner loops.

    Returns:
        UHOResult.

    Raises:
        ValueError: no val classes, or an inner lr schedule other than fixed (UHO searches a
            fixed lr; the reference raised the same conflict, ml4ai/mliis
            meta_learners/supervised_reptile/supervised_reptile/reptile.py).
    """
    if base.scheduler not in ("fixed", "constant"):
        raise ValueError(f"UHO searches a fixed inner learning rate; drop --learning_rate_scheduler"
                         f" {base.scheduler} (or set it to fixed) together with "
                         f"--optimize_update_hyperparms_on_val_set.")
    csv_path = results_csv_path(out_dir, cfg.results_csv_name, evaluation.shots)

    def adapt_task_of(run_loop):
        return make_adapt_task(run_loop, tasks, val_names, base, cfg, evaluation, seed=seed)
    adapt_many = None if replicas is None else _spread_adapt(replicas, adapt_task_of)
    result = optimize_update_hyperparams(
        adapt_task_of(loop), list(val_names), cfg,
        {"lr": base.learning_rate, "drop_rate": base.dropout_rate, "aug_rate": base.aug_rate,
         "inner_batch_size": base.batch_size}, csv_path, repetitions=cfg.repetitions, seed=seed,
        adapt_many=adapt_many)
    median_mode = cfg.eval_tasks_with_median_early_stopping_iterations
    plot_uho_search(result.rows, os.path.splitext(csv_path)[0] + ".png", median_mode=median_mode)
    best = {**dataclasses.asdict(result.best), "mean_val_iou": result.best_mean_iou,
            "num_configs": result.num_configs, "results_csv": csv_path}
    path = os.path.join(out_dir, BEST_NAME)
    atomic.write_json(path, best, indent=1)
    return result
