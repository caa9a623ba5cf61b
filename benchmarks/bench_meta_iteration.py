"""Where a meta-iteration's time goes, timed inside the meta-iterations themselves.

    .venv/bin/python benchmarks/bench_meta_iteration.py [--image_size 64] [--inner_iters 8 59]

EfficientLab-B0 --rsd 2 4 (random init), SGD, augmentation 0.5, bce_dice. For Reptile and
FOMAML* (tail 5 of 10 shots) at each `--inner_iters`, runs one warm-up meta-iteration (it traces
the train step, the snapshots and the outer update) and `--meta_iterations` timed ones, with
`report.timing.record()` open, so each part is measured where it is spent:
inner steps (`run_steps`), sampling (episodes, splits, mini-batch indices, seeds), support
tensors, snapshots and restores (and the optimizer reset), directions (weight arithmetic),
the meta-update, all-reduce (distributed runs only), and what is left of the meta-iteration's
wall time outside every section ("unattributed": Python glue, and with replicas the thread
hand-offs). Prints a table with each part's share of the timed meta-iterations and writes JSON.
Target: everything but the inner steps < 3%.

`--num_replicas N` (N > 1) runs the same meta-iterations through `--distribute mirrored` on N
logical CPU devices; the all-reduce column (packing, the collective, unpacking) is then the
coordination the distribution adds (target < 2%). On 2 shared cores the replicas compete for
the same cores, so only that share, not a speedup, is meaningful here.
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

from benchmarks._common import fake_class, load, write_json  # noqa: E402
from devices.distribute import DistributedMetaLearner, Replicas, configure_devices, \
    make_strategy  # noqa: E402
from meta.algorithms import MetaLearner  # noqa: E402
from meta.config import MetaConfig  # noqa: E402
from meta.adaptation import Adaptation  # noqa: E402
from meta.inner import InnerLoop  # noqa: E402
from models.build import build_model  # noqa: E402
from models.config import LossConfig, ModelConfig  # noqa: E402
from models.losses import make_loss  # noqa: E402
from report import timing  # noqa: E402

PARTS = ("inner_steps", "sampling", "support_tensors", "snapshots", "directions", "meta_update",
         "all_reduce")


# Parts that run inside each replica's thread: with R local replicas their sections add up R
# overlapping timelines, so they are divided by R (the all-reduce part is left whole: an
# upper bound, since its packing also runs in the threads).
PER_REPLICA = ("inner_steps", "sampling", "support_tensors", "snapshots", "directions")


def _measure(learner: MetaLearner, tasks, rng, iterations: int,
             local_replicas: int = 1) -> dict[str, float]:
    with timing.record() as totals:
        start = time.perf_counter()
        for _ in range(iterations):
            learner.meta_step(tasks, rng, 0.1)
        wall = time.perf_counter() - start
    parts = {k: totals.get(k, 0.0) / (local_replicas if k in PER_REPLICA else 1)
             for k in PARTS}
    parts["unattributed"] = wall - sum(parts.values())
    parts["wall"] = wall
    return parts


def main(argv=None) -> dict:
    """Run the breakdown, print the table, write JSON; returns the numbers."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--inner_batch", type=int, default=8)
    p.add_argument("--inner_iters", type=int, nargs="+", default=[8, 59])
    p.add_argument("--meta_batch", type=int, default=2)
    p.add_argument("--meta_iterations", type=int, default=2, help="timed meta-iterations")
    p.add_argument("--num_replicas", type=int, default=1,
                   help="> 1: --distribute mirrored over this many logical CPU devices")
    p.add_argument("--json", default="benchmarks/results/meta_iteration.json")
    a = p.parse_args(argv)
    configure_devices("mirrored", a.num_replicas)  # before TensorFlow's first op
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    paper = Adaptation(sgd=True, learning_rate=5e-4, batch_size=a.inner_batch, aug_rate=0.5,
                       dropout_rate=0.5)

    def make_loop():
        model = build_model(ModelConfig(image_size=a.image_size, rsd=(2, 4)))
        return InnerLoop(model, make_loss(LossConfig(loss_name="bce_dice", l2=True), model),
                         paper)
    loop = make_loop()
    replicas = Replicas(make_strategy("mirrored", a.num_replicas), loop, make_loop) \
        if a.num_replicas > 1 else None
    tasks = [fake_class(f"c{i}", a.image_size, 10, rng) for i in range(a.meta_batch)]
    results = []
    print(f"EfficientLab-B0 --rsd 2 4 at {a.image_size} px, SGD, batch {a.inner_batch}, "
          f"augmentation 0.5, meta-batch {a.meta_batch}, replicas {a.num_replicas}; {load()}")
    header = "".join(f"{k[:11]:>12s}" for k in PARTS + ("unattributed",))
    print(f"  {'algorithm':9s} {'steps':>5s} {'iter s':>7s} {'warm-up s':>9s}  "
          f"share of timed meta-iterations (%):{header}  {'non-inner %':>11s}")
    for iters in a.inner_iters:
        schedule = dataclasses.replace(paper, steps=iters)
        for name, meta in (("Reptile", MetaConfig(algorithm="reptile", train_shots=10,
                                                  inner=schedule)),
                           ("FOMAML*", MetaConfig(algorithm="fomaml", train_shots=10,
                                                  foml_tail=5, inner=schedule))):
            learner = MetaLearner(loop, meta) if replicas is None else \
                DistributedMetaLearner(replicas, meta)
            local = 1 if replicas is None else len(replicas.loops)
            warm = _measure(learner, tasks, rng, 1, local)
            timed = _measure(learner, tasks, rng, a.meta_iterations, local)
            share = {k: 100.0 * v / timed["wall"] for k, v in timed.items() if k != "wall"}
            non_inner = 100.0 - share["inner_steps"]
            row = "".join(f"{share[k]:12.2f}" for k in PARTS + ("unattributed",))
            print(f"  {name:9s} {iters:5d} {timed['wall'] / a.meta_iterations:7.2f} "
                  f"{warm['wall']:9.2f}  {'':35s}{row}  {non_inner:11.2f}")
            results.append({"algorithm": name, "inner_iters": iters,
                            "seconds_per_meta_iteration": timed["wall"] / a.meta_iterations,
                            "warm_up": warm, "timed": timed, "share_percent": share,
                            "non_inner_percent": non_inner})
    print(f"  traces: {loop.trace_counts}  ({load()})")
    numbers = {"image_size": a.image_size, "inner_batch": a.inner_batch,
               "num_replicas": a.num_replicas,
               "meta_batch": a.meta_batch, "meta_iterations": a.meta_iterations,
               "rows": results, "traces": loop.trace_counts}
    write_json(a.json, numbers)
    return numbers


if __name__ == "__main__":
    main()
