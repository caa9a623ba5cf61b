"""The outer meta-training loop, read top to bottom.

After ml4ai/mliis meta_learners/supervised_reptile/supervised_reptile/train.py.

Per meta-iteration, in a fixed order: schedule (annealed epsilon), meta-step (meta-batch of
training classes drawn from the one training RNG), non-finite check, periodic evaluation,
log, checkpoint. Every periodic action goes through `is_time`. Step numbers count completed
meta-iterations: the periodic evaluation and checkpoint of step s happen after s meta-iterations
(s = 0 evaluates the initial weights). The evaluation has its own seeded streams and restores the
full state, so it never changes the training trajectory: a run resumed from a checkpoint ends
with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from absl import logging
import numpy as np

from data.splits import Splits
from data.tasks import ClassData
from meta.algorithms import MetaLearner
from meta.config import MetaConfig
from meta.divergence import DivergenceGuard
from meta.schedules import meta_step_size
from storage import checkpoint
from report.logs import TrainingLog
from report.progress import Progress


def is_time(step: int, every: int, total: int) -> bool:
    """Whether a periodic action runs after `step` completed meta-iterations.

    Args:
        step: completed meta-iterations (0 = before training).
        every: period (>= 1).
        total: meta_iters; the last step always counts.

    Returns:
        True when step is a multiple of every, or the final step.
    """
    return step % every == 0 or step == total


@dataclass(frozen=True)
class MonitorResult:
    """The periodic evaluation: a few train tasks and a few held-out tasks.

    Attributes:
        train: the train tasks' result (its `mean_iou`).
        held_out: the held-out tasks' result (its `mean_iou` and `mean_query_loss`).
    """

    train: object
    held_out: object


def held_out_split(splits: Splits) -> tuple[str, tuple[str, ...]]:
    """The split the periodic evaluation monitors: val, or test when there is no val set.

    Args:
        splits: the class splits.

    Returns:
        (label, class names).
    """
    if splits.val:
        return "val", splits.val
    return "test", splits.test


def _resumed_checkpoint(run_dir: str, start_step: int) -> str | None:
    """The checkpoint a resumed run started from, for the divergence message (None if fresh)."""
    if start_step == 0:
        return None
    try:
        path = checkpoint.latest_checkpoint(run_dir)
    except FileNotFoundError:
        path = None
    return path or f"the one this run resumed from (meta-iteration {start_step})"


def meta_train(learner: MetaLearner, tasks: Mapping[str, ClassData], splits: Splits, *,
               meta: MetaConfig, monitor: Callable[[int], MonitorResult],
               rng: np.random.Generator, run_dir: str, config_json: str,
               checkpoint_groups: Mapping[str, Sequence], start_step: int = 0,
               stop_after: int | None = None,
               meta_step_size_at: Callable[[int], float] | None = None) -> int:
    """Meta-train from `start_step` to `meta.meta_iters`, evaluating and checkpointing periodically.

    Args:
        learner: the meta-learner (model, inner loop, outer optimizer).
        tasks: class name -> ClassData.
        splits: class splits; meta-batches draw from splits.train only.
        meta: the meta config (iterations, batch, steps, eval interval, seed, keep).
        monitor: step -> MonitorResult, the periodic evaluation (adapt.evaluate.monitor); it
            must leave the learner's state as it found it.
        rng: the training generator (its state is checkpointed).
        run_dir: --checkpoint directory (checkpoints, CSV, TensorBoard).
        config_json: resolved config written into every checkpoint.
        checkpoint_groups: variables to checkpoint ("model", "inner_optimizer", ...).
        start_step: completed meta-iterations (from a restored checkpoint).
        stop_after: stop once this many meta-iterations are completed (tests, interruption).
        meta_step_size_at: step -> meta step size, replacing the linear anneal (meta-transfer
            learning's StepLR, baselines/mtl.py).

    Returns:
        completed meta-iterations at exit.

    Raises:
        DivergenceError: a meta-iteration produced a non-finite loss or weights, or runaway
            weights; raised before anything of it is saved.
    """
    train_names = list(splits.train)
    label, _ = held_out_split(splits)
    replicas = getattr(learner, "replicas", None)
    is_chief = replicas is None or replicas.is_chief
    # Only the chief writes; other workers log into a scratch folder nobody reads.
    log = TrainingLog(run_dir if is_chief else tempfile.mkdtemp(prefix="metaseg-worker-"),
                      start_step=start_step)
    last_saved, last_path = start_step, _resumed_checkpoint(run_dir, start_step)
    guard = DivergenceGuard(learner.loop.variables, learner.loop.model.variables)
    end = meta.meta_iters if stop_after is None else min(stop_after, meta.meta_iters)

    def periodic(step: int, epsilon: float, loss: float | None, seconds: float) -> None:
        result = monitor(step)
        logging.info(f"Meta-iteration {step}: train mIoU={result.train.mean_iou:.4f} "
                     f"{label} mIoU={result.held_out.mean_iou:.4f} meta-step={epsilon:.3g}")
        log.log(step, meta_step_size=epsilon, loss=loss, seconds=seconds,
                train_miou=result.train.mean_iou, val_miou=result.held_out.mean_iou,
                val_loss=result.held_out.mean_query_loss)

    if start_step == 0 and meta.meta_iters > 0:
        periodic(0, meta.meta_step_size, None, 0.0)
    progress = Progress(meta.meta_iters, "meta-training", initial=start_step)
    try:
        for step in range(start_step, end):
            start = time.monotonic()
            # schedule
            epsilon = meta_step_size(step, initial=meta.meta_step_size,
                                     final=meta.meta_step_size_final, meta_iters=meta.meta_iters) \
                if meta_step_size_at is None else meta_step_size_at(step)
            # meta-step
            batch = [tasks[train_names[i]]
                     for i in rng.integers(0, len(train_names), size=meta.meta_batch_size)]
            loss = learner.meta_step(batch, rng, epsilon)
            guard.check(loss, first=last_saved + 1, last=step + 1, last_checkpoint=last_path)
            done, seconds = step + 1, time.monotonic() - start
            progress.update(loss=loss, eps=epsilon)
            # periodic evaluation + log
            if is_time(done, meta.eval_interval, meta.meta_iters):
                periodic(done, epsilon, loss, seconds)
            else:
                log.log(done, meta_step_size=epsilon, loss=loss, seconds=seconds)
            # checkpoint
            if is_time(done, meta.eval_interval, meta.meta_iters) and is_chief:
                last_path = checkpoint.save_checkpoint(run_dir, done, checkpoint_groups,
                                                       rng_state=rng.bit_generator.state,
                                                       config_json=config_json,
                                                       keep=meta.keep_checkpoints)
                last_saved = done
    finally:
        progress.close()
        log.close()
    return max(end, start_step)
