"""The data side against the inner loop: episodes a second delivered vs consumed.

    .venv/bin/python benchmarks/bench_data.py [--image_size 64] [--inner_iters 8] [--train_shots 10]

Delivered: per training episode, what happens outside the network: drawing the episode
(`data.episodes.sample_episode`), its support tensors, its mini-batch indices and seeds, and
`--inner_iters` augmented batches (`data.augment.augment_batch` compiled alone, rate 0.5).
Consumed: the inner loop's steps of that episode without augmentation (EfficientLab-B0
--rsd 2 4, SGD). Both are timed in alternating rounds in one process. Prints episodes/s of each
and the headroom (delivered / consumed; target >= 10x); writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._common import PAPER_SGD, b0_loop, fake_class, load, write_json  # noqa: E402
from data.augment import augment_batch  # noqa: E402
from data.episodes import sample_episode  # noqa: E402
from meta.inner import draw_batches, run_steps, support_tensors  # noqa: E402


def main(argv=None) -> dict:
    """Run the comparison, print the table, write JSON; returns the numbers."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--inner_batch", type=int, default=8)
    p.add_argument("--inner_iters", type=int, default=8)
    p.add_argument("--train_shots", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/data.json")
    a = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    loop = b0_loop(a.image_size)
    schedule = dataclasses.replace(PAPER_SGD, steps=a.inner_iters, batch_size=a.inner_batch)
    cls = fake_class("c", a.image_size, 60, rng)
    augment = tf.function(lambda x, m, i, s: augment_batch(tf.gather(x, i), tf.gather(m, i),
                                                           0.5, s))

    def deliver():
        episode = sample_episode(rng, cls, a.train_shots, 0)
        x, m = support_tensors(episode.support_images, episode.support_masks)
        indices, seeds = draw_batches(rng, len(x), schedule)
        for t in range(a.inner_iters):
            out = augment(x, m, indices[t], seeds[t])
        return out[0].numpy()

    episode = sample_episode(rng, cls, a.train_shots, 0)
    x, m = support_tensors(episode.support_images, episode.support_masks)
    indices, seeds = draw_batches(rng, len(x), schedule)

    def consume():
        run_steps(loop, x, m, indices, seeds, schedule)

    deliver(), consume()  # traces
    delivered, consumed = [], []
    for _ in range(a.rounds):
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < 2.0 or n < 3:
            deliver()
            n += 1
        delivered.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        consume()
        consumed.append(1.0 / (time.perf_counter() - start))
    d, c = float(np.median(delivered)), float(np.median(consumed))
    print(f"{a.train_shots}-shot episodes of {a.inner_iters} steps, batch {a.inner_batch}, "
          f"{a.image_size} px; {load()}")
    print(f"  data side (sampling + support tensors + indices + augmentation) "
          f"{d:8.2f} episodes/s")
    print(f"  inner loop (EfficientLab-B0 --rsd 2 4, SGD)                      "
          f"{c:8.2f} episodes/s")
    print(f"headroom {d / c:.1f}x")
    numbers = {"image_size": a.image_size, "inner_iters": a.inner_iters,
               "inner_batch": a.inner_batch, "train_shots": a.train_shots,
               "delivered_episodes_per_s": delivered, "consumed_episodes_per_s": consumed,
               "headroom": d / c}
    write_json(a.json, numbers)
    return numbers


if __name__ == "__main__":
    main()
