"""Update hyperparameter optimization (UHO): GP search over the test-time adaptation routine.

Paper: "using Bayesian optimization to infer the optimal test-time adaptation routine
hyperparameters"; ml4ai/mliis meta_learners/hyperparam_search.py. For each configuration proposed
by scikit-optimize's
`Optimizer("GP", acq_func="EI")` (half of the budget random initial points), every val task is
adapted with per-task early stopping (a callable the caller supplies, `adapt_task`); the
objective is the mean val IoU. The best configuration is the one with the highest mean IoU, its
step count the median of its per-task best step counts.

Fixes against the reference:
* every searched dimension of the best configuration is returned and applied (the reference kept
  only lr and steps);
* `--uho_outer_iters` works: it is *reconstructed* from the reference's history (an earlier search
  "successively reducing the range based on top x percent of results", x = 0.1): round r + 1 runs
  a fresh GP search on the lr span of the top 10% (at least 2) configurations of round r;
* rows go to the CSV as they are measured, and a rerun resumes: every configuration is asked
  again (so the optimizer's random draws replay), finished ones are told their recorded values,
  a half-measured one is completed; the resumed search is the uninterrupted one.

Dimensions whose low equals its high are not searched; they take the base setting (the model's
dropout, `--aug_rate`, `--eval-batch`, `--learning-rate`), as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from absl import logging
import numpy as np
from skopt import Optimizer
from skopt.space import Integer, Real

from adapt.config import UHOConfig
from adapt.uho_csv import UHORow, append_row, read_rows
from report.progress import Progress



SEARCH_KEYS = ("lr", "drop_rate", "aug_rate", "inner_batch_size")
TOP_FRACTION = 0.1  # the reference's x: top 10% of configurations define the next lr range


@dataclass(frozen=True)
class UpdateHyperparams:
    """A test-time adaptation routine: every field is applied by the evaluation."""

    lr: float
    steps: int
    drop_rate: float
    aug_rate: float
    inner_batch_size: int


@dataclass(frozen=True)
class UHOResult:
    """Outcome of the search.

    Attributes:
        best: the chosen routine (all four searched dimensions plus the median step count).
        best_mean_iou: its mean val IoU (the objective).
        num_configs: configurations measured over all rounds.
        rows: every measured row, resumed ones included.
    """

    best: UpdateHyperparams
    best_mean_iou: float
    num_configs: int
    rows: tuple[UHORow, ...]


# adapt_task(params, task, repetition, steps) -> (best_steps, IoU). steps=None: early stopping
# between --min_steps and --max_steps; steps=int: exactly that many steps.
AdaptTask = Callable[[dict, str, int, "int | None"], "tuple[int, float]"]


def search_dimensions(ranges: dict) -> list:
    """skopt dimensions for the keys whose range is not a single value.

    Every kept dimension is log-uniform with base 2, as in the reference; a range starting at 0
    (e.g. dropout 0..0.5) cannot be log-uniform and is searched uniformly instead.

    Args:
        ranges: key (of SEARCH_KEYS) -> (low, high).

    Returns:
        list of skopt Real/Integer dimensions named by key, in SEARCH_KEYS order.
    """
    dims = []
    for key in SEARCH_KEYS:
        low, high = ranges[key]
        if low == high:
            continue
        prior = "log-uniform" if low > 0 else "uniform"
        if key == "inner_batch_size":
            dims.append(Integer(int(low), int(high), prior=prior, base=2, name=key))
        else:
            dims.append(Real(float(low), float(high), prior=prior, base=2, name=key))
    return dims


def _group_configs(rows: Sequence[UHORow]) -> dict[tuple[int, int], list[UHORow]]:
    configs: dict[tuple[int, int], list[UHORow]] = {}
    for row in rows:
        configs.setdefault((row.round, row.config), []).append(row)
    return configs


def _params_of(row: UHORow) -> dict:
    return {"lr": row.lr, "drop_rate": row.drop_rate, "aug_rate": row.aug_rate,
            "inner_batch_size": row.inner_batch_size}


def _objective_rows(config_rows: Sequence[UHORow], median_mode: bool) -> list[UHORow]:
    kind = "median_steps" if median_mode else "early_stopping"
    return [r for r in config_rows if r.kind == kind]


def _median_steps(config_rows: Sequence[UHORow]) -> int:
    return int(np.median([r.best_num_steps for r in config_rows if r.kind == "early_stopping"]))


def _narrow_lr(configs: list[tuple[float, float]], n_top_min: int = 2) -> tuple[float, float]:
    """lr span of the top 10% (at least 2) configurations given as (lr, mean IoU)."""
    n_top = max(n_top_min, math.ceil(TOP_FRACTION * len(configs)))
    top = sorted(configs, key=lambda c: -np.nan_to_num(c[1], nan=-1.0))[:n_top]
    lrs = [lr for lr, _ in top]
    return min(lrs), max(lrs)


def _check_resumable(csv_path: str, rows: Sequence[UHORow], tasks: set, repetitions: int) -> None:
    for row in rows:
        if row.task not in tasks or row.repetition >= repetitions:
            raise ValueError(
                f"UHO results file {csv_path!r} holds task {row.task!r} repetition "
                f"{row.repetition}, which this run does not evaluate (val tasks or repetitions "
                f"changed). Move the file away or pass another --uho_results_csv_name.")


def optimize_update_hyperparams(adapt_task: AdaptTask, task_names: Sequence[str], cfg: UHOConfig,
                                base: dict, csv_path: str, *, repetitions: int = 1,
                                seed: int = 0, adapt_many=None) -> UHOResult:
    """Run the GP search (resuming from `csv_path`) and pick the best adaptation routine.

    Args:
        adapt_task: `adapt_task(params, task, repetition, steps)` adapts the given val task's
            episode number `repetition` with `params` (keys SEARCH_KEYS) and returns
            (best_steps, IoU): with steps=None by early stopping, otherwise after exactly `steps`.
            It must sample the same episode for the same (task, repetition) every call.
        task_names: the val tasks.
        cfg: ranges, budget, rounds and flags of the search.
        base: value of every key of SEARCH_KEYS used when its range is a single value.
        csv_path: results file; existing rows are resumed, new rows appended.
        repetitions: objective repetitions per task (the reference: 1 with --fss_1000, else 4).
        seed: seeds the optimizer (round r uses seed + r).
        adapt_many: optional `adapt_many(params, [(task, repetition), ...], steps)` ->
            [(best_steps, IoU), ...], the same results as adapt_task item by item (e.g. spread
            over replicas); a configuration's rows are then appended together.

    Returns:
        UHOResult.

    Raises:
        ValueError: no val tasks, or a results file that belongs to another search.
    """
    if not task_names:
        raise ValueError("UHO needs at least one val task (--num_val_tasks >= 1).")
    missing = [k for k in SEARCH_KEYS if k not in base]
    if missing:
        raise ValueError(f"base is missing {missing}")
    median_mode = cfg.eval_tasks_with_median_early_stopping_iterations
    fixed_steps = cfg.max_steps if cfg.min_steps == cfg.max_steps else None
    rows = read_rows(csv_path)
    _check_resumable(csv_path, rows, set(task_names), repetitions)
    measured = _group_configs(rows)
    if measured:
        logging.info("UHO: resuming from %s (%d rows, %d configurations)", csv_path, len(rows),
                     len(measured))
    ranges = {"lr": tuple(cfg.lr_range), "drop_rate": tuple(cfg.drop_rate_range),
              "aug_rate": tuple(cfg.aug_rate_range),
              "inner_batch_size": tuple(cfg.batch_size_range)}
    base = dict(base)
    summary: list[tuple[dict, float, int, list[UHORow]]] = []  # params, mean IoU, steps, rows
    per_config = repetitions * len(task_names) * (2 if median_mode else 1)
    progress = Progress(cfg.uho_outer_iters * cfg.num_configs_to_sample * per_config,
                        "UHO adaptations", initial=len(rows))
    for round_index in range(cfg.uho_outer_iters):
        dims = search_dimensions(ranges)
        budget = cfg.num_configs_to_sample if dims else 1
        opt = (Optimizer(dims, base_estimator=cfg.estimator, acq_func="EI",
                         acq_optimizer="lbfgs", n_initial_points=max(1, budget // 2),
                         random_state=seed + round_index) if dims else None)
        round_configs = []
        for config_index in range(budget):
            done = measured.get((round_index, config_index), [])
            # Ask for every configuration, measured or not: the random initial points come from
            # the optimizer's RNG, so a resumed search replays the same draws.
            asked = opt.ask() if opt is not None else []
            if done:
                params, x = _replayed(done, dims, base, csv_path, config_index)
            else:
                x = asked
                params = dict(base)
                params.update({d.name: (int(v) if d.name == "inner_batch_size" else float(v))
                               for d, v in zip(dims, x)})
            config_rows = list(done)
            config_rows += _measure(adapt_task, adapt_many, task_names, repetitions, params, done,
                                    round_index, config_index, fixed_steps, median_mode, csv_path,
                                    lambda row: progress.update(iou=row.iou))
            objective = _objective_rows(config_rows, median_mode)
            mean_iou = float(np.nanmean([r.iou for r in objective]))
            steps = _median_steps(config_rows)
            if opt is not None:
                # skopt minimizes; a NaN objective (no finite IoU) is told as the worst value.
                opt.tell(x, -mean_iou if math.isfinite(mean_iou) else 0.0)
            logging.info("UHO round %d config %d/%d: %s -> mean val IoU %.4f, median steps %d",
                         round_index, config_index + 1, budget, _fmt(params), mean_iou, steps)
            round_configs.append((params["lr"], mean_iou))
            summary.append((params, mean_iou, steps, config_rows))
        if ranges["lr"][0] != ranges["lr"][1] and round_index + 1 < cfg.uho_outer_iters:
            low, high = _narrow_lr(round_configs)
            if low == high:  # the top configurations agree: lr is settled, stop searching it
                base["lr"] = low
            ranges["lr"] = (low, high)
            logging.info("UHO: round %d searches lr in [%g, %g]", round_index + 1, low, high)

    progress.close()
    return _best(summary)


def _replayed(done: Sequence[UHORow], dims, base: dict, csv_path: str,
              config_index: int) -> tuple[dict, list]:
    """The params and search point of a configuration measured before (a resumed search).

    Raises:
        ValueError: it was measured with another fixed value or outside this run's ranges.
    """
    params = _params_of(done[0])
    x = [params[d.name] for d in dims]
    searched = {d.name for d in dims}
    changed = [k for k in SEARCH_KEYS if k not in searched and params[k] != base[k]]
    if changed:
        raise ValueError(
            f"UHO results file {csv_path!r}: configuration {config_index} was measured "
            f"with {', '.join(f'{k}={params[k]}' for k in changed)}, but this run "
            f"fixes {', '.join(f'{k}={base[k]}' for k in changed)}. Move the file "
            f"away or pass another --uho_results_csv_name.")
    for d, value in zip(dims, x):
        if value not in d:
            raise ValueError(
                f"UHO results file {csv_path!r}: {d.name}={value} of configuration "
                f"{config_index} lies outside this run's range {d.bounds}. Move the "
                f"file away or pass another --uho_results_csv_name.")
    return params, x


def _best(summary: Sequence[tuple[dict, float, int, list[UHORow]]]) -> UHOResult:
    """The configuration of highest mean IoU (a NaN mean counts as -1), and every row."""
    best_params, best_iou, best_steps, _ = max(summary, key=lambda s: np.nan_to_num(s[1], nan=-1.0))
    best = UpdateHyperparams(lr=float(best_params["lr"]), steps=int(best_steps),
                             drop_rate=float(best_params["drop_rate"]),
                             aug_rate=float(best_params["aug_rate"]),
                             inner_batch_size=int(best_params["inner_batch_size"]))
    all_rows = tuple(r for s in summary for r in s[3])
    logging.info("UHO best: %s, steps %d, mean val IoU %.4f", _fmt(best_params), best.steps,
                 best_iou)
    return UHOResult(best=best, best_mean_iou=best_iou, num_configs=len(summary), rows=all_rows)


def _measure(adapt_task, adapt_many, task_names, repetitions, params, done, round_index,
             config_index, fixed_steps, median_mode, csv_path, on_row) -> list[UHORow]:
    """Adapt every (repetition, task) not yet in `done`; append each row as it is measured."""
    have = {(r.kind, r.repetition, r.task) for r in done}
    new_rows = []

    def record(kind, repetition, task, steps, iou):
        row = UHORow(round=round_index, config=config_index, kind=kind, repetition=repetition,
                     task=task, best_num_steps=int(steps), iou=float(iou), lr=params["lr"],
                     drop_rate=params["drop_rate"], aug_rate=params["aug_rate"],
                     inner_batch_size=params["inner_batch_size"])
        append_row(csv_path, row)
        new_rows.append(row)
        on_row(row)

    def run(kind, steps):
        pending = [(repetition, task) for repetition in range(repetitions)
                   for task in task_names if (kind, repetition, task) not in have]
        if adapt_many is None:  # row by row, each appended as soon as it is measured
            results = (adapt_task(params, task, repetition, steps) for repetition, task in pending)
        else:
            results = adapt_many(params, [(task, repetition) for repetition, task in pending],
                                 steps)
        for (repetition, task), (best_steps, iou) in zip(pending, results):
            record(kind, repetition, task, best_steps if steps is None else steps, iou)

    run("early_stopping", fixed_steps)
    if median_mode:
        run("median_steps", _median_steps(list(done) + new_rows))
    return new_rows


def _fmt(params: dict) -> str:
    return (f"lr={params['lr']:.3g} drop_rate={params['drop_rate']:.3g} "
            f"aug_rate={params['aug_rate']:.3g} inner_batch_size={params['inner_batch_size']}")
