"""Joint-training baseline (`--joint_train`): ordinary supervised training on all meta-train
classes pooled, the transfer-learning baseline the paper compares against (ml4ai/mliis
joint_train.py).

Differences from the reference's `joint_train.py` (which crashed on `args.lsd`):
* the same network and head as the meta-learned model (2 channels: the pooled object classes vs
  background) instead of a 1001-channel head, so its checkpoint is accepted by
  `--pretrained --checkpoint`, UHO and the k-shot experiment exactly like a meta-learned one
  (`--do_not_restore_final_layer_weights` still drops the head for the reference's protocol);
* it reuses the compiled inner-loop step (`meta.inner.InnerLoop.train_step`, batch gathered in
  numpy, augmentation in-graph) and the inner optimizer (SGD or Adam with beta1 = 0), never
  resetting it between batches;
* the learning rate decays linearly per epoch from --learning-rate to --learning-rate x 1e-4
  (the reference's 0.005 -> 5e-7 ratio).

Checkpoints (storage.checkpoint, kind "joint_train"): one per epoch, model + optimizer + RNG, so a
rerun resumes at the last finished epoch. Log: `<run_dir>/joint_train_log.csv`.
"""
from __future__ import annotations

import csv
import math
import os
from functools import partial
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from data.episodes import mini_batch_indices
from errors import DivergenceError
from data.tasks import ClassData, pool_classes
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.streams import STREAM_TRAINING
from storage import checkpoint
from report.progress import Progress

KIND = "joint_train"
LOG_NAME = "joint_train_log.csv"
FINAL_LR_FRACTION = 1e-4
_SEED_HIGH = 2**31 - 1


def epoch_learning_rate(epoch: int, epochs: int, learning_rate: float) -> float:
    """Linear decay from learning_rate (epoch 0) to learning_rate * 1e-4 (last epoch).

    Args:
        epoch: 0-based epoch.
        epochs: number of epochs.
        learning_rate: initial rate.

    Returns:
        the rate of this epoch.
    """
    frac = epoch / (epochs - 1) if epochs > 1 else 0.0
    return learning_rate * ((1 - frac) + frac * FINAL_LR_FRACTION)


def _groups(loop: InnerLoop) -> dict[str, list]:
    return checkpoint.variable_groups(loop.model, optimizer=loop.optimizer)


def _check_kind(run_dir: str, path: str) -> None:
    if checkpoint.read_state(path).get("kind") != KIND:
        raise ValueError(f"--checkpoint {run_dir!r} holds a meta-training checkpoint ({path}); "
                         f"joint training needs its own directory.")


def _resume(loop: InnerLoop, run_dir: str, rng: np.random.Generator) -> int:
    state = checkpoint.resume(run_dir, _groups(loop), rng, check=partial(_check_kind, run_dir))
    if state is None:
        return 0
    logging.info(f"Resuming joint training from {state['path']} after epoch {state['step']}")
    return int(state["step"])


def joint_train(loop: InnerLoop, tasks: Mapping[str, ClassData], train_names: Sequence[str], *,
                training: Adaptation, epochs: int, run_dir: str, config_json: str,
                keep: int = 2, stop_after: int | None = None) -> list[float]:
    """Train the loop's model on the pooled classes; checkpoint after every epoch.

    Args:
        loop: the inner loop of the model (its optimizer and compiled step are used).
        tasks: class name -> ClassData.
        train_names: the meta-train classes.
        training: how each step trains (meta-training's inner adaptation): pairs per step
            (batch_size), the initial learning rate (it decays linearly per epoch), aug_rate,
            dropout_rate, and the seed of the batch order and augmentation (resumable: the RNG
            is checkpointed).
        epochs: passes over the pooled pairs.
        run_dir: --checkpoint directory.
        config_json: the run's resolved config.
        keep: checkpoints kept.
        stop_after: stop once this many epochs are done (interruption; a rerun resumes).

    Returns:
        mean training loss of each epoch run now.

    Raises:
        DivergenceError: a non-finite loss.
    """
    if epochs < 1:
        raise ValueError(f"--joint_train_epochs must be >= 1. Received: {epochs}")
    batch_size, learning_rate, aug_rate = \
        training.batch_size, training.learning_rate, training.aug_rate
    images, masks = pool_classes(tasks, train_names)
    loop.set_dropout_rate(training.dropout_rate)
    rng = np.random.default_rng([int(training.seed), STREAM_TRAINING])
    start = _resume(loop, run_dir, rng)
    steps_per_epoch = max(1, len(images) // batch_size)
    logging.info(f"Joint training on {len(images)} pairs of {len(train_names)} classes: "
                 f"{epochs} epochs x {steps_per_epoch} steps of batch {batch_size}")
    if start == 0:
        loop.reset_optimizer()
    log_path = os.path.join(run_dir, LOG_NAME)
    os.makedirs(run_dir, exist_ok=True)
    history = []
    end = epochs if stop_after is None else min(stop_after, epochs)
    progress = Progress((end - start) * steps_per_epoch, "joint training")
    try:
        for epoch in range(start, end):
            lr = epoch_learning_rate(epoch, epochs, learning_rate)
            batches = mini_batch_indices(rng, len(images), batch_size, steps_per_epoch)
            seeds = rng.integers(0, _SEED_HIGH, size=(steps_per_epoch, 2)).astype(np.int32)
            losses = []
            for indices, step_seed in zip(batches, seeds):
                x = images[indices].astype(np.float32)
                m = masks[indices].astype(np.float32)
                loss = float(loop.train_step(x, m, np.arange(len(indices)), lr, aug_rate,
                                             step_seed))
                if not math.isfinite(loss):
                    raise DivergenceError(f"Non-finite joint-training loss ({loss}) in epoch "
                                          f"{epoch + 1}; lower --learning-rate.")
                losses.append(loss)
                progress.update(loss=loss)
            history.append(float(np.mean(losses)))
            new = not os.path.exists(log_path)
            with open(log_path, "a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["epoch", "learning_rate", "loss"])
                writer.writerow([epoch + 1, lr, history[-1]])
            checkpoint.save_checkpoint(run_dir, epoch + 1, _groups(loop),
                                       rng_state=rng.bit_generator.state, config_json=config_json,
                                       keep=keep, extra={"kind": KIND})
            logging.info(f"Joint training epoch {epoch + 1}/{epochs}: lr {lr:.3g}, mean loss "
                         f"{history[-1]:.4f}")
    finally:
        progress.close()
    return history
