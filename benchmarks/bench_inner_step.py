"""Our inner step against Keras' own `model.train_on_batch`, side by side in one process.

    .venv/bin/python benchmarks/bench_inner_step.py [--image_size 128] [--batch 8] [--steps 8]

Same model (EfficientLab-B0 --rsd 2 4, random init), same batch, same loss (bce_dice), same
SGD optimizer settings, both compiled without XLA, augmentation off. Timed in alternating
rounds so that load from other processes hits both alike: each round runs a task's `--steps`
inner steps through `meta.inner.run_steps` (the path every task takes) and then the same
number of `train_on_batch` calls on the pre-gathered batch. Prints ms per step (median and
best round) and the line `ratio <ours / train_on_batch>` of the best rounds (on a shared machine
the fastest round is the one least disturbed by others; the median ratio is printed too);
writes the numbers as JSON.
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

from benchmarks._common import fake_class, load, write_json  # noqa: E402
from meta.adaptation import Adaptation  # noqa: E402
from meta.inner import InnerLoop, draw_batches, run_steps, support_tensors  # noqa: E402
from models.build import build_model  # noqa: E402
from models.config import LossConfig, ModelConfig  # noqa: E402
from models.losses import make_loss  # noqa: E402


def main(argv=None) -> dict:
    """Run the comparison, print the table, write JSON; returns the numbers."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="inner steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default="benchmarks/results/inner_step.json")
    a = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(ModelConfig(image_size=a.image_size, rsd=(2, 4)))
    loss_fn = make_loss(LossConfig(loss_name="bce_dice"), model)
    lr = 5e-4
    schedule = Adaptation(sgd=True, learning_rate=lr, steps=a.steps, batch_size=a.batch)
    loop = InnerLoop(model, loss_fn, schedule)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss=loss_fn,
                  jit_compile=False)
    task = fake_class("c", a.image_size, max(10, a.batch), rng)
    x, m = support_tensors(task.images, task.masks)
    indices, seeds = draw_batches(rng, len(task.images), schedule)
    batch_x = tf.gather(x, indices[0])
    batch_y = tf.one_hot(tf.cast(tf.gather(m, indices[0]), tf.int32), 2)
    # Keras' step sees one fixed batch; ours gathers its batch from the support set in-graph.
    ours_indices = np.repeat(indices[:1], a.steps, axis=0)

    def ours():
        return run_steps(loop, x, m, ours_indices, seeds, schedule)

    def keras_steps():
        for _ in range(a.steps):
            loss = model.train_on_batch(batch_x, batch_y)
        return loss

    start = time.perf_counter()
    ours()
    ours_first = time.perf_counter() - start
    start = time.perf_counter()
    keras_steps()
    keras_first = time.perf_counter() - start
    ours_ms, keras_ms = [], []
    for _ in range(a.rounds):
        for fn, out in ((ours, ours_ms), (keras_steps, keras_ms)):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1000.0 / a.steps)
    ours_med, keras_med = float(np.median(ours_ms)), float(np.median(keras_ms))
    ratio = min(ours_ms) / min(keras_ms)
    print(f"EfficientLab-B0 --rsd 2 4, {a.image_size} px, batch {a.batch}, SGD, bce_dice, "
          f"no XLA, no augmentation; {a.rounds} alternating rounds of {a.steps} steps; {load()}")
    print(f"  {'':34s} {'ms/step (median)':>16s} {'min':>8s} {'max':>8s} {'first round s':>14s}")
    for name, values, first in (("InnerLoop (meta.inner.run_steps)", ours_ms, ours_first),
                                ("model.train_on_batch", keras_ms, keras_first)):
        print(f"  {name:34s} {np.median(values):16.1f} {min(values):8.1f} {max(values):8.1f} "
              f"{first:14.1f}")
    print(f"median ratio {ours_med / keras_med:.3f}")
    print(f"ratio {ratio:.3f}")
    numbers = {"image_size": a.image_size, "batch": a.batch, "steps": a.steps,
               "rounds": a.rounds, "ours_ms": ours_ms, "train_on_batch_ms": keras_ms,
               "ours_median_ms": ours_med, "train_on_batch_median_ms": keras_med,
               "ratio": ratio, "median_ratio": ours_med / keras_med,
               "ours_first_round_s": ours_first,
               "train_on_batch_first_round_s": keras_first,
               "traces": loop.trace_counts}
    write_json(a.json, numbers)
    return numbers


if __name__ == "__main__":
    main()
