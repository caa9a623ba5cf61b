"""A process of the distributed tests (logical devices and worker clusters must be set up before
TensorFlow starts, so each runs in a fresh interpreter).

    python distributed_worker.py logical OUT.npz
        2 logical CPU devices: 3 meta-iterations of meta-batch 4 on 2 replicas, on 1 and without
        a strategy, and a distributed vs a serial evaluation; writes the three weights and both
        IoU lists; and the BN statistics of one meta-iteration on 2 replicas next to the mean of
        the two replicas' chains of tasks, recomputed on one device.
    python distributed_worker.py train OUT.npz RUN_DIR ITERS [STOP_AFTER]
        meta_train with --distribute multi_worker (TF_CONFIG set: a cluster) or mirrored on one
        device (no TF_CONFIG); resumes from RUN_DIR's checkpoint; writes the final weights.
    python distributed_worker.py plain OUT.npz RUN_DIR ITERS [STOP_AFTER]
        the same meta_train on one device without a strategy (a run without --distribute).
"""
from __future__ import annotations

import os
import sys
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

import numpy as np  # noqa: E402

from devices.distribute import configure_devices  # noqa: E402

MODE = sys.argv[1]
configure_devices("mirrored", 2 if MODE == "logical" else 1)

import tensorflow as tf  # noqa: E402

from adapt.config import EvalConfig, UHOConfig  # noqa: E402
from adapt.evaluate import evaluate, monitor  # noqa: E402
from adapt.uho_objective import _spread_adapt, make_adapt_task  # noqa: E402
from data.splits import Splits  # noqa: E402
from devices.distribute import DistributedMetaLearner, Replicas, make_strategy  # noqa: E402
from meta.algorithms import MetaLearner  # noqa: E402
from meta.config import MetaConfig  # noqa: E402
from meta.adaptation import Adaptation  # noqa: E402
from meta.inner import InnerLoop  # noqa: E402
from meta.train import meta_train  # noqa: E402
from storage import checkpoint  # noqa: E402
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks  # noqa: E402

SCHEDULE = Adaptation(learning_rate=0.05, steps=3, batch_size=3, aug_rate=0.5, sgd=True,
                      dropout_rate=0.2)
META = MetaConfig(algorithm="fomaml", train_shots=6, foml_tail=2, meta_batch_size=4,
                  meta_step_size=0.5, meta_step_size_final=0.5, meta_iters=3, eval_interval=2,
                  monitor_tasks=2, seed=0, inner=SCHEDULE)


def make_loop() -> InnerLoop:
    return InnerLoop(tiny_model(), cross_entropy, SCHEDULE)


def trainable(loop: InnerLoop) -> list[np.ndarray]:
    return [v.numpy() for v in loop.variables]


def moving_statistics(loop: InnerLoop) -> np.ndarray:
    return np.concatenate([v.numpy().ravel() for v in loop.model.variables
                           if "moving_mean" in v.path or "moving_variance" in v.path])


def batch_norm_mean(tasks, names) -> dict[str, np.ndarray]:
    """One meta-iteration on 2 replicas, and the mean of its two chains recomputed on one device."""
    rng = np.random.default_rng(1)
    batch = [tasks[names[i]] for i in rng.integers(0, len(names), size=4)]
    replicas = Replicas(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), make_loop(),
                        make_loop)
    DistributedMetaLearner(replicas, META).meta_step(batch, rng, 0.5)
    rng = np.random.default_rng(1)
    rng.integers(0, len(names), size=4)
    plain = MetaLearner(make_loop(), META)
    seeds, generators = plain.task_generators(rng, 4)
    plain.loop.full_state.save()
    chains = []
    for first in (0, 1):  # replica r runs tasks r and r + 2, from the same start
        plain.loop.full_state.restore()
        plain.theta.save()
        for k in (first, first + 2):
            plain.run_task(batch[k], generators[k], seeds[k])
        chains.append(moving_statistics(plain.loop))
    plain.loop.full_state.restore()
    plain.theta.save()
    for k in range(4):  # one device: one chain through the 4 tasks
        plain.run_task(batch[k], generators[k], seeds[k])
    return {"bn_two": moving_statistics(replicas.loops[0]),
            "bn_other_replica": moving_statistics(replicas.loops[1]),
            "bn_mean_of_chains": (chains[0] + chains[1]) / 2,
            "bn_one_device": moving_statistics(plain.loop)}


def logical(out: str) -> None:
    tasks = toy_tasks(6, n=8)
    names = sorted(tasks)
    weights, ious = {}, {}
    plain = MetaLearner(make_loop(), META)
    rng = np.random.default_rng(0)
    for step in range(3):
        batch = [tasks[names[i]] for i in rng.integers(0, len(names), size=4)]
        plain.meta_step(batch, rng, 0.5)
    weights["plain"] = trainable(plain.loop)
    for label, devices in (("two", ["/cpu:0", "/cpu:1"]), ("one", ["/cpu:0"])):
        replicas = Replicas(tf.distribute.MirroredStrategy(devices), make_loop(), make_loop)
        learner = DistributedMetaLearner(replicas, META)
        rng = np.random.default_rng(0)
        for step in range(3):
            batch = [tasks[names[i]] for i in rng.integers(0, len(names), size=4)]
            learner.meta_step(batch, rng, 0.5)
        weights[label] = trainable(learner.loop)
        evaluation = dict(evaluation=EvalConfig(shots=3, num_query=2, transductive=True,
                                                eval_samples=1, serially_eval_all_test_tasks=True),
                          seed=0, stream=1, split="test")
        ious[f"{label}_spread"] = evaluate(learner.loop, tasks, names, SCHEDULE,
                                           replicas=replicas, **evaluation).task_ious
        ious[f"{label}_serial"] = evaluate(learner.loop, tasks, names, SCHEDULE,
                                           **evaluation).task_ious
        # UHO's val episodes with early stopping: spread over the replicas vs one by one
        def adapt_task_of(run_loop):
            return make_adapt_task(run_loop, tasks, names, SCHEDULE,
                                   UHOConfig(max_steps=4, patience=2),
                                   EvalConfig(shots=3, num_query=2, transductive=True), seed=0)
        params = {"lr": 0.05, "drop_rate": 0.1, "aug_rate": 0.5, "inner_batch_size": 3}
        items = [(name, repetition) for repetition in range(2) for name in names[:3]]
        spread = _spread_adapt(replicas, adapt_task_of)(params, items, None)
        serial = [adapt_task_of(learner.loop)(params, t, r, None) for t, r in items]
        ious[f"{label}_uho_spread"] = np.array(spread, np.float64)
        ious[f"{label}_uho_serial"] = np.array(serial, np.float64)
    np.savez(out, **{f"{label}_{i}": w for label in weights for i, w in enumerate(weights[label])},
             **ious, **batch_norm_mean(tasks, names))


def train(out: str, run_dir: str, iters: int, stop_after: int | None) -> None:
    tasks = toy_tasks(6, n=8)
    splits = Splits(train=tuple(sorted(tasks))[:4], val=tuple(sorted(tasks))[4:], test=())
    if MODE == "plain":
        learner = MetaLearner(make_loop(), META)
    else:
        multi = "TF_CONFIG" in os.environ
        strategy = make_strategy("multi_worker" if multi else "mirrored", 1)
        replicas = Replicas(strategy, make_loop(), make_loop)
        learner = DistributedMetaLearner(replicas, META)
    groups = learner.checkpoint_groups()
    rng = np.random.default_rng([0, 0])
    state = checkpoint.resume(run_dir, groups, rng)
    start = 0 if state is None else int(state["step"])
    meta = MetaConfig(**{**META.__dict__, "meta_iters": iters})
    watch = partial(monitor, learner, tasks, splits, meta=meta,
                    evaluation=EvalConfig(shots=3, num_query=2), adaptation=SCHEDULE)
    meta_train(learner, tasks, splits, meta=meta, monitor=watch, rng=rng, run_dir=run_dir,
               config_json="{}",
               checkpoint_groups=groups, start_step=start, stop_after=stop_after)
    np.savez(out, *trainable(learner.loop))


if __name__ == "__main__":
    if MODE == "logical":
        logical(sys.argv[2])
    else:
        train(sys.argv[2], sys.argv[3], int(sys.argv[4]),
              int(sys.argv[5]) if len(sys.argv) > 5 else None)
