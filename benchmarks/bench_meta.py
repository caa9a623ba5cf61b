"""Meta-learning speed on CPU: ms per inner step and per meta-iteration, trace time excluded.

    .venv/bin/python benchmarks/bench_meta.py [--image_size 128] [--inner_batch 8] ...

Builds EfficientLab-B0 --rsd 2 4 (random init), runs one warm-up of everything that is traced
(train step, predict, snapshots, outer update), then times
* inner steps of batch `--inner_batch` (`--augmentation` on, rate 0.5, SGD),
* full meta-iterations (Reptile and FOMAML*) of `--meta_batch` tasks x `--inner_iters` steps,
  and the per-task overhead beyond the inner steps (snapshot/restore, directions, meta-update),
* one evaluation task (adapt `--inner_iters` steps on 5 shots + predict 5 queries).
Prints numbers only: speed targets live in benchmarks, not in timed unit tests.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from adapt.evaluate import evaluate_task  # noqa: E402
from data.episodes import sample_episode  # noqa: E402
from data.tasks import ClassData  # noqa: E402
from meta.algorithms import MetaLearner  # noqa: E402
from meta.config import MetaConfig  # noqa: E402
from meta.adaptation import Adaptation  # noqa: E402
from meta.inner import InnerLoop, support_tensors  # noqa: E402
from models.build import build_model  # noqa: E402
from models.config import LossConfig, ModelConfig  # noqa: E402
from models.losses import make_loss  # noqa: E402


def _fake_class(name: str, size: int, n: int, rng: np.random.Generator) -> ClassData:
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    masks = (rng.random((n, size, size)) < 0.3).astype(np.uint8)
    return ClassData(name=name, images=images, masks=masks)


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000.0


def main(argv=None) -> None:
    """Run the benchmark and print a small table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--inner_batch", type=int, default=8)
    p.add_argument("--inner_iters", type=int, default=8)
    p.add_argument("--meta_batch", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed inner steps")
    p.add_argument("--meta_iterations", type=int, default=2, help="timed meta-iterations")
    p.add_argument("--augmentation", default="paper", choices=["paper", "metaseg"])
    a = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    size = a.image_size
    model = build_model(ModelConfig(image_size=size, rsd=(2, 4)))
    loss = make_loss(LossConfig(loss_name="bce_dice", l2=True), model)
    schedule = Adaptation(sgd=True, learning_rate=5e-4, steps=a.inner_iters,
                          batch_size=a.inner_batch, aug_rate=0.5, augmentation=a.augmentation,
                          dropout_rate=0.5)
    loop = InnerLoop(model, loss, schedule)
    tasks = [_fake_class(f"c{i}", size, 10, rng) for i in range(a.meta_batch)]
    x, m = support_tensors(tasks[0].images, tasks[0].masks)
    idx = np.arange(a.inner_batch, dtype=np.int32) % 10
    seed = np.array([1, 2], np.int32)

    t0 = time.perf_counter()
    loop.train_step(x, m, idx, 5e-4, 0.5, seed)
    first = (time.perf_counter() - t0) * 1000
    step_ms = _time(lambda: loop.train_step(x, m, idx, 5e-4, 0.5, seed), a.steps)
    step_noaug_ms = _time(lambda: loop.train_step(x, m, idx, 5e-4, 0.0, seed), a.steps)
    rows = [("inner step, first call (trace + run)", first),
            (f"inner step, batch {a.inner_batch}, augment 0.5", step_ms),
            (f"inner step, batch {a.inner_batch}, no augmentation", step_noaug_ms)]
    for name, meta in (("Reptile", MetaConfig(algorithm="reptile", train_shots=10,
                                              inner=schedule)),
                       ("FOMAML*", MetaConfig(algorithm="fomaml", train_shots=10, foml_tail=5,
                                              inner=schedule))):
        learner = MetaLearner(loop, meta)
        learner.meta_step(tasks, rng, 0.1)  # warm-up: traces snapshots and the outer update
        ms = _time(lambda: learner.meta_step(tasks, rng, 0.1), a.meta_iterations)
        overhead = (ms - a.meta_batch * a.inner_iters * step_ms) / a.meta_batch
        rows.append((f"{name} meta-iteration ({a.meta_batch} tasks x {a.inner_iters} steps)", ms))
        rows.append((f"{name} overhead per task beyond its inner steps", overhead))
    episode = sample_episode(rng, tasks[0], 5, 5)
    evaluate_task(loop, "c0", episode, schedule, rng, transductive=True)  # warm-up (predict)
    eval_ms = _time(lambda: evaluate_task(loop, "c0", episode, schedule, rng,
                                          transductive=True), 2)
    rows.append((f"evaluation task (5-shot, {a.inner_iters} steps, 5 queries)", eval_ms))
    predict_ms = _time(lambda: loop.predict(episode.query_images).numpy(), 5)
    rows.append(("predict 5 queries", predict_ms))
    print(f"EfficientLab-B0 --rsd 2 4 at {size} px, SGD, CPU threads: "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}")
    for name, ms in rows:
        print(f"  {name:<58s} {ms:10.1f} ms")
    print(f"  traces: {loop.trace_counts}")


if __name__ == "__main__":
    main()
