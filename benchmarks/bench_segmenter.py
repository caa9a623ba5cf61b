"""The adaptation API's speed: seconds for `from_checkpoint`, `fit`, and `predict` per image.

    .venv/bin/python benchmarks/bench_segmenter.py [--checkpoint demo_runs/reptile] [--sizes 64 224]

At each size an EfficientLab-B0 `--rsd 2 4` init is written as a checkpoint (with `--checkpoint`,
that init at its own size instead), then timed as a user meets it: `from_checkpoint` (reading,
building, loading, compiling nothing yet), the first `fit` (5 examples, the init's schedule,
tracing included) and a second one, and `predict` on 20 images of another size (first call,
tracing included, then per image). Writes JSON next to the table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402

from benchmarks._common import load, write_json  # noqa: E402
from models.build import build_model  # noqa: E402
from segmenter import from_checkpoint  # noqa: E402
from segmenter.api import Segmenter, make_loop  # noqa: E402
from segmenter.settings import from_values  # noqa: E402


def _random_init(size: int, folder: str) -> str:
    """A B0 init at `size` with the demo's schedule, saved as fine-tuned weights."""
    settings = from_values({"image_size": size, "rsd": (2, 4), "loss_name": "bce_dice",
                            "learning_rate": 0.001, "steps": 20, "batch_size": 8}, {})
    seg = Segmenter(make_loop(build_model(settings.model), settings), settings)
    return seg.save(folder)


def _time(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(path: str, num_images: int = 20) -> dict:
    """Seconds of each API call on the init at `path`."""
    seg, load_s = _time(lambda: from_checkpoint(path))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(5)]
    masks = [(rng.random((300, 400)) < 0.3).astype(np.uint8) for _ in range(5)]
    queries = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(num_images)]
    _, first_fit = _time(lambda: seg.fit(images, masks))
    _, fit_s = _time(lambda: seg.fit(images, masks))
    _, first_predict = _time(lambda: seg.predict(queries[:1], progress=False))
    _, predict_s = _time(lambda: seg.predict(queries, progress=False))
    return {"image_size": seg.image_size, "steps": seg.settings.adapt.steps,
            "from_checkpoint_s": load_s, "first_fit_s": first_fit, "fit_s": fit_s,
            "first_predict_s": first_predict, "predict_per_image_s": predict_s / num_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="time this init too")
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 224])
    parser.add_argument("--json", default="benchmarks/results/segmenter.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [_random_init(size, os.path.join(tmp, f"b0_{size}")) for size in args.sizes]
        for path in ([args.checkpoint] if args.checkpoint else []) + paths:
            rows.append({"init": path if path == args.checkpoint else "B0 --rsd 2 4 (random)",
                         **measure(path)})
    print(f"{load()}; 5 examples of 400x300, 20 images of 640x480")
    print("| init | px | steps | from_checkpoint s | first fit s | fit s | first predict s | "
          "predict s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['init']} | {r['image_size']} | {r['steps']} | {r['from_checkpoint_s']:.2f} | "
              f"{r['first_fit_s']:.2f} | {r['fit_s']:.2f} | {r['first_predict_s']:.2f} | "
              f"{r['predict_per_image_s']:.3f} |")
    write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
