"""Converter and loader throughput on FSS-1000-size (224 px) pairs.

    .venv/bin/python benchmarks/bench_convert.py [--pairs 1000]

Builds a temporary FSS-layout folder from the real photos (tests/fixtures/real_data.py says where
they are looked for; repeated to --pairs; falls back to 224 px demo images when absent), then times:
  * convert at 224 px (JPEGs kept as-is: the FSS-1000 case),
  * convert at 128 px (every image decoded, resized, re-encoded),
  * load_tasks of the 224 px shards (TF JPEG/PNG decoding into uint8 arrays).
FSS-1000 is 10,000 pairs: divide by the printed rates for its conversion/load time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import fss_1000_image_to_tfrecord as converter  # noqa: E402
from data import demo  # noqa: E402
from data.tasks import load_tasks  # noqa: E402
from tests.fixtures.real_data import missing_reason, real_fewshot_dir  # noqa: E402


def build_input(folder: str, pairs: int) -> str:
    """FSS-layout folder with `pairs` 224 px pairs, 10 per class; returns where it came from."""
    if not missing_reason():
        real = real_fewshot_dir()
        sources = sorted(os.path.join(real, c, f[:-4]) for c in os.listdir(real)
                         if os.path.isdir(os.path.join(real, c))
                         for f in os.listdir(os.path.join(real, c)) if f.endswith(".jpg"))
        for i in range(pairs):
            class_dir = os.path.join(folder, f"class_{i // 10:04d}")
            os.makedirs(class_dir, exist_ok=True)
            for ext in (".jpg", ".png"):
                shutil.copyfile(sources[i % len(sources)] + ext,
                                os.path.join(class_dir, f"{i % 10 + 1}{ext}"))
        return f"real photos from {real}"
    demo.make_demo_dataset(folder, num_classes=max(1, pairs // 10), images_per_class=10,
                           image_size=224, seed=0)
    return f"224 px demo images: {missing_reason()}"


def main() -> None:
    """Run the benchmark and print pairs/s."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = build_input(os.path.join(tmp, "fss"), args.pairs)
        print(f"input: {args.pairs} pairs at 224 px ({source}); {os.cpu_count()} CPU cores")
        converter.convert(os.path.join(tmp, "fss"), os.path.join(tmp, "warm"), image_size=224,
                          log=None)  # imports TensorFlow and warms the file cache
        for size in (224, 128):
            start = time.perf_counter()
            report = converter.convert(os.path.join(tmp, "fss"), os.path.join(tmp, f"out{size}"),
                                       image_size=size, log=None)
            seconds = time.perf_counter() - start
            print(f"convert -> {size} px: {report.num_pairs / seconds:7.0f} pairs/s "
                  f"({seconds:.2f} s, {len(report.shards)} shards)")
        start = time.perf_counter()
        tasks = load_tasks(os.path.join(tmp, "out224"))
        seconds = time.perf_counter() - start
        loaded = sum(len(t) for t in tasks.values())
        print(f"load_tasks 224 px: {loaded / seconds:7.0f} pairs/s ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
