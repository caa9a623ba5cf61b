"""mIoU on real photos through the adaptation API: an init against a random init, per class and
per number of examples k.

    .venv/bin/python benchmarks/real_fewshot.py --checkpoint demo_runs/reptile [--data DIR] \
        [--k 1 2 3 5 10]

Each class folder (`<n>.jpg` + `<n>.png`, FSS-1000 layout) is split once: its pairs after the
first K (K the largest k asked for, or one fewer than the class's size when it is smaller) are
the images to segment, the same for every k, scored against their masks at each photo's own
size; for each k <= K its first k pairs in natural order are the examples. The init is adapted with its own
schedule (`from_checkpoint`); the random init is the same network, freshly built, with the same
settings. Real photos: `--data`, else where tests/fixtures/real_data.py finds them.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402

from adapt import iou  # noqa: E402
from benchmarks._common import load, write_json  # noqa: E402
from segmenter.images import read_pair  # noqa: E402
from models.build import build_model  # noqa: E402
from segmenter import from_checkpoint  # noqa: E402
from segmenter.api import Segmenter, make_loop  # noqa: E402
from tests.fixtures.real_data import missing_reason, real_fewshot_dir  # noqa: E402

K_VALUES = (5,)


def _pairs(folder: str):
    stems = sorted((f[:-4] for f in os.listdir(folder) if f.endswith(".jpg")),
                   key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
    return [read_pair(os.path.join(folder, s + ".jpg"), os.path.join(folder, s + ".png"))
            for s in stems if os.path.isfile(os.path.join(folder, s + ".png"))]


def class_miou(seg: Segmenter, pairs, k: int, first_query: int) -> float:
    """Mean IoU over the class's queries (pairs[first_query:]) after fitting its first k."""
    seg.fit([p[0] for p in pairs[:k]], [p[1] for p in pairs[:k]])
    masks = seg.predict([p[0] for p in pairs[first_query:]], progress=False)
    scores = [iou.iou_per_image((m > 0)[None], truth[None])[0]
              for m, (_, truth) in zip(masks, pairs[first_query:])]
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=real_fewshot_dir())
    parser.add_argument("--k", type=int, nargs="+", default=list(K_VALUES),
                        help="numbers of examples; each class's queries are the same for all")
    parser.add_argument("--json", default="benchmarks/results/real_fewshot.json")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"real_fewshot.py: {missing_reason() or f'no photos at {args.data}'}; "
                 f"pass --data DIR")
    init = from_checkpoint(args.checkpoint)
    random = Segmenter(make_loop(build_model(init.settings.model), init.settings),
                       init.settings)
    rows = []
    print("| class | k | queries | init | random init |")
    for name in sorted(os.listdir(args.data)):
        folder = os.path.join(args.data, name)
        if not os.path.isdir(folder):
            continue
        pairs = _pairs(folder)
        first_query = min(max(args.k), len(pairs) - 1)  # the same queries for every k
        for k in sorted(set(min(k, first_query) for k in args.k)):
            meta = class_miou(init, pairs, k, first_query)
            scratch = class_miou(random, pairs, k, first_query)
            rows.append({"class": name, "examples": k, "queries": len(pairs) - first_query,
                         "init_miou": meta, "random_miou": scratch})
            print(f"| {name} | {k} | {len(pairs) - first_query} | {meta:.3f} | {scratch:.3f} |",
                  flush=True)
    a = init.settings.adapt
    print(f"\n| k | classes | init mIoU | random-init mIoU |  ({a.steps} steps, lr "
          f"{a.learning_rate:g}, {init.image_size} px; {load()})\n|---|---|---|---|")
    for k in sorted({r["examples"] for r in rows}):
        at_k = [r for r in rows if r["examples"] == k]
        print(f"| {k} | {len(at_k)} | {np.mean([r['init_miou'] for r in at_k]):.3f} | "
              f"{np.mean([r['random_miou'] for r in at_k]):.3f} |")
    write_json(args.json, {"checkpoint": args.checkpoint, "k": list(args.k), "rows": rows,
                           "settings": init.settings.to_config()["adapt"]})


if __name__ == "__main__":
    main()
