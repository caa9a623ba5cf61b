"""Print the demo's results side by side: run_metasegnet.py's meta-test_results.json of each run.

    python scripts/demo_summary.py demo_runs/reptile demo_runs/fomaml_star

The random-init row comes from the first run that measured it (--compare_random_init): every
demo run builds the same seeded network and evaluates the same seeded episodes, so one
measurement serves all rows.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from meta.settings import read_config  # noqa: E402  (config.json of any version; no TensorFlow)

RESULTS_NAME = "meta-test_results.json"


def _load(run_dir: str) -> dict:
    path = os.path.join(run_dir, RESULTS_NAME)
    if not os.path.isfile(path):
        raise SystemExit(f"demo_summary.py: error: {path} is missing; did the run finish?")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(run_dirs: list[str]) -> int:
    if not run_dirs:
        raise SystemExit("usage: python scripts/demo_summary.py RUN_DIR [RUN_DIR ...]")
    runs = [(os.path.basename(os.path.normpath(d)), _load(d)) for d in run_dirs]
    random_init = next((r["random_init"] for _, r in runs if "random_init" in r), None)
    first = runs[0][1]
    cfg = read_config(first["config"])
    print(f"\nHeld-out {first['split']} classes: {first['num_classes']}, "
          f"{cfg['eval']['shots']}-shot, {cfg['adapt']['steps']} adaptation steps, "
          f"{first['num_task_samples']} task samples (same episodes for every row)")
    print(f"{'init':<22} {'meta-iters':>10} {'mIoU':>8} {'95% CI':>8} {'class-acc IoU':>14} "
          f"{'time':>8}")
    for name, r in runs:
        print(f"{name:<22} {r['meta_iterations']:>10} {r['mean_iou']:>8.4f} {r['ci95']:>8.4f} "
              f"{r['class_accumulated_iou']:>14.4f} {r.get('wall_seconds', float('nan')) / 60:>6.1f}m")
    if random_init is not None:
        print(f"{'random init':<22} {0:>10} {random_init['mean_iou']:>8.4f} "
              f"{random_init['ci95']:>8.4f} {random_init['class_accumulated_iou']:>14.4f} "
              f"{'':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
