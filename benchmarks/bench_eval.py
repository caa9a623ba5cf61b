"""Evaluation speed: seconds per evaluated task, and the paper's 240-task protocol extrapolated.

    .venv/bin/python benchmarks/bench_eval.py [--image_size 64] [--eval_iters 8]

EfficientLab-B0 --rsd 2 4 (random init), SGD, 5-shot, 5 queries predicted together
(--transductive), batch 8. Times `adapt.evaluate.evaluate` on `--tasks` classes (snapshot, adapt,
predict, score, restore per task), split into the adaptation steps and the rest with
`report.timing`, and extrapolates the paper's protocol (240 classes x 2 samples x 59 steps,
`--eval-samples 2 --serially_eval_all_test_tasks --eval-iters 59`) at this image size:
480 x (rest per task + 59 x seconds per step). Writes JSON.
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

from adapt.config import EvalConfig  # noqa: E402
from adapt.evaluate import evaluate  # noqa: E402
from benchmarks._common import PAPER_SGD, b0_loop, fake_class, load, write_json  # noqa: E402
from report import timing  # noqa: E402

PAPER_TASKS, PAPER_STEPS = 240 * 2, 59


def main(argv=None) -> dict:
    """Run the evaluation benchmark, print the table, write JSON; returns the numbers."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--eval_iters", type=int, default=8)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/eval.json")
    a = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    loop = b0_loop(a.image_size)
    schedule = dataclasses.replace(PAPER_SGD, steps=a.eval_iters, batch_size=8)
    tasks = {f"c{i}": fake_class(f"c{i}", a.image_size, 12, rng) for i in range(a.tasks)}
    names = sorted(tasks)

    def run():
        return evaluate(loop, tasks, names, schedule,
                        EvalConfig(shots=5, num_query=5, transductive=True, eval_samples=1,
                                   serially_eval_all_test_tasks=True),
                        seed=0, stream=1, split="test")

    run()  # traces
    with timing.record() as totals:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    per_task = wall / len(names)
    step_s = totals["inner_steps"] / (len(names) * a.eval_iters)
    rest = per_task - totals["inner_steps"] / len(names)
    protocol_h = PAPER_TASKS * (rest + PAPER_STEPS * step_s) / 3600.0
    print(f"evaluation, {a.image_size} px, 5-shot, {a.eval_iters} steps, 5 queries; {load()}")
    print(f"  seconds per task                     {per_task:8.2f}")
    print(f"  of which adaptation steps            {totals['inner_steps'] / len(names):8.2f} "
          f"({step_s * 1000:.0f} ms/step)")
    print(f"  of which the rest (predict, score, snapshots) {rest:8.2f}")
    print(f"paper protocol (480 tasks x 59 steps) at {a.image_size} px: {protocol_h:.2f} h")
    numbers = {"image_size": a.image_size, "eval_iters": a.eval_iters, "tasks": len(names),
               "seconds_per_task": per_task, "seconds_per_step": step_s,
               "rest_per_task_s": rest, "paper_protocol_hours": protocol_h}
    write_json(a.json, numbers)
    return numbers


if __name__ == "__main__":
    main()
