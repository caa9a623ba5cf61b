"""Does the placement change the experiment? The same command on one device, on mirrored replicas
and on two local worker processes, compared weight by weight.

    .venv/bin/python benchmarks/placement.py --data-dir demo_shards [--image_size 64]
        [--meta_iters 3] [--meta_batch 4] [--out benchmarks/results/placement]

Runs `run_metasegnet.py` (EfficientLab-B0 `--rsd 2 4`, Reptile, 5 inner steps, meta-batch 4) as
a plain run, with `--distribute mirrored --num_replicas 1` and `2` (logical CPU devices), and with
`--distribute multi_worker` on two processes at 127.0.0.1; then prints, against the plain run,
the largest absolute difference of the trainable weights and of the batch-norm moving
statistics in each run's final checkpoint, and each run's held-out mIoU. Writes the numbers as
JSON into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.fixtures.ports import free_ports  # noqa: E402
RUNS = {"plain": [], "mirrored_1": ["--distribute", "mirrored", "--num_replicas", "1"],
        "mirrored_2": ["--distribute", "mirrored", "--num_replicas", "2"],
        "workers_2": ["--distribute", "multi_worker"]}


def _flags(a, run_dir: str) -> list[str]:
    return ["--data-dir", a.data_dir, "--image_size", str(a.image_size), "--num_test_tasks", "20",
            "--num_val_tasks", "10", "--seed", "0", "--rsd", "2", "4", "--loss_name", "bce_dice",
            "--learning-rate", "0.001", "--inner-batch", "8", "--inner-iters", "5",
            "--train-shots", "5", "--meta-batch", str(a.meta_batch), "--meta-iters",
            str(a.meta_iters), "--meta-step", "1.0", "--meta-step-final", "0.1",
            "--eval-interval", str(a.meta_iters), "--monitor_tasks", "1", "--shots", "5",
            "--eval-batch", "8", "--eval-iters", "5", "--eval-samples", "2", "--transductive",
            "--checkpoint", run_dir]


def _run(name: str, flags: list[str], run_dir: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    command = [sys.executable, os.path.join(ROOT, "run_metasegnet.py"), *flags, *RUNS[name]]
    if name != "workers_2":
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = [subprocess.Popen(command, env={**env, "TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": i}})},
                              cwd=ROOT, stdout=subprocess.DEVNULL) for i in range(2)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"placement.py: the {name} worker failed (exit {p.returncode})")


def _weights(run_dir: str) -> dict[str, np.ndarray]:
    with open(os.path.join(run_dir, "LAST"), encoding="utf-8") as f:
        path = os.path.join(run_dir, f.read().strip())
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        names = [v[0] for v in json.load(f)["variables"]["model"]]
    with np.load(os.path.join(path, "variables.npz")) as arrays:
        return {name: arrays[f"model/{i:05d}"] for i, name in enumerate(names)}


def _kind(name: str) -> str | None:
    if "moving_mean" in name or "moving_variance" in name:
        return "bn"
    if "seed_generator" in name or name.endswith("dropout/rate"):
        return None
    return "trainable"


def _max_difference(a: dict, b: dict, kind: str) -> tuple[float, str]:
    pairs = [(float(np.abs(a[k] - b[k]).max()), k) for k in a if _kind(k) == kind]
    return max(pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", dest="data_dir", required=True)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--meta_iters", type=int, default=3)
    p.add_argument("--meta_batch", type=int, default=4)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "placement"))
    p.add_argument("--runs", nargs="*", default=list(RUNS))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    weights, mious = {}, {}
    for name in a.runs:
        run_dir = os.path.join(a.out, name)
        if not os.path.isfile(os.path.join(run_dir, "meta-test_results.json")):
            _run(name, _flags(a, run_dir), run_dir)
        weights[name] = _weights(run_dir)
        with open(os.path.join(run_dir, "meta-test_results.json"), encoding="utf-8") as f:
            mious[name] = json.load(f)["mean_iou"]
    rows = {}
    print("| run | trainable max diff vs plain | BN statistics max diff vs plain | held-out mIoU |")
    print("|---|---|---|---|")
    for name in a.runs:
        trainable, _ = _max_difference(weights[name], weights["plain"], "trainable")
        bn, where = _max_difference(weights[name], weights["plain"], "bn")
        rows[name] = {"trainable": trainable, "bn": bn, "bn_variable": where,
                      "mean_iou": mious[name]}
        print(f"| {name} | {trainable:.3g} | {bn:.3g} ({where}) | {mious[name]:.4f} |")
    if "mirrored_1" in weights and "mirrored_2" in weights:
        trainable, _ = _max_difference(weights["mirrored_2"], weights["mirrored_1"], "trainable")
        bn, where = _max_difference(weights["mirrored_2"], weights["mirrored_1"], "bn")
        rows["mirrored_2_vs_1"] = {"trainable": trainable, "bn": bn, "bn_variable": where}
        print(f"| mirrored 2 vs 1 | {trainable:.3g} | {bn:.3g} ({where}) | |")
    with open(os.path.join(a.out, "placement.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
