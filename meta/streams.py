"""Every random stream of a run, one table: `np.random.default_rng([seed, STREAM, ...])`.

One --seed fixes them all, and each is independent of the others, so an evaluation never moves
the training trajectory and any two inits are scored on the same episodes. The own-image
fine-tuning keys its generator by [seed, number of examples] instead (segmenter/api.py).

Inside a meta-batch (`MetaConfig.task_streams`, recorded in config.json):
* `per_task`: the training generator draws one seed per task slot (`task_seeds`); task k then
  draws its pairs, mini-batches and augmentations from `default_rng(seed_k)` and reseeds the
  model's dropout generators from seed_k. A task's randomness depends on the seed, the
  meta-iteration and its slot, never on the device that runs it, so one device, N replicas and
  N workers follow the same trajectory.
* `one_stream`: every task draws from the training generator in turn. Runs without --distribute
  written before `task_streams` existed used it; they resume with it, on one device only.
"""
from __future__ import annotations

import numpy as np

STREAM_TRAINING = 0  # meta-training's meta-batches and inner mini-batches; joint/pre-training
STREAM_TEST = 1  # the final evaluation on the held-out (test or val) classes
STREAM_TRAIN = 2  # the final evaluation's few train tasks
STREAM_MONITOR = 3  # the periodic monitor, keyed further by (meta-iteration, split)
STREAM_UHO = 4  # UHO's val episodes (adapt/uho_objective.py)
STREAM_KSHOT = 5  # the k-shot learning curves (adapt/kshot.py)
STREAM_PRETRAIN = 6  # MTL pre-training's per-epoch val episodes (baselines/pretrain.py)
STREAM_META_FINE_TUNE = 7  # meta-fine-tuning on train + val after UHO (modes/experiments.py)
STREAM_HSNET = 8  # the one-episode-per-query protocol (adapt/protocol_hsnet.py)

PER_TASK = "per_task"
ONE_STREAM = "one_stream"
TASK_STREAMS = (PER_TASK, ONE_STREAM)
_SEED_HIGH = 2**31 - 1


def task_seeds(rng: np.random.Generator, num_tasks: int) -> np.ndarray:
    """One seed per task slot of a meta-batch, drawn from the training generator (`per_task`).

    Args:
        rng: the training generator.
        num_tasks: the meta-batch size.

    Returns:
        int32 (num_tasks, 2): row k seeds task k's generator and its dropout generators.
    """
    return rng.integers(0, _SEED_HIGH, size=(num_tasks, 2)).astype(np.int32)


def recorded_task_streams(saved_config: dict) -> str:
    """The task-stream scheme a checkpoint was written with (config.json before it was recorded too).

    Args:
        saved_config: a checkpoint's parsed config.json.

    Returns:
        its `meta.task_streams`, or what its placement used: `per_task` with --distribute,
        `one_stream` without.
    """
    recorded = saved_config.get("meta", {}).get("task_streams")
    if recorded is not None:
        return recorded
    distribute = saved_config.get("device", {}).get("distribute", "none")
    return ONE_STREAM if distribute == "none" else PER_TASK
