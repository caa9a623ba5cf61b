"""Labelling a folder: images/s, the model's wait on input, and peak memory against folder size.

    .venv/bin/python benchmarks/bench_folder.py [--sizes 64 224] [--photos 30 300]
        [--width 3000 --height 2000]

Speed: at each size an EfficientLab-B0 `--rsd 2 4` init (random weights: speed only) is saved
as adapted weights and `Segmenter.predict_folder` segments 48 photos of `--width`x`--height`
(after one warm-up folder, so tracing is not counted): images/s, and the share of the time the
model waited for the reader thread's decoded batches.

Memory: the command a user runs, `run_metasegnet.py --fine-tune-task TASK --checkpoint INIT
--query_dir TREE --masks_dir OUT --mask_format png coco yolo`, on trees of 30 and 300 photos
(nested folders, non-Latin names, an `a.jpg` beside an `a.png`, two corrupt files), each in its
own process: its peak resident memory (ru_maxrss). On the largest tree the first run is killed
with SIGKILL once a third of the photos are done and rerun; the check at the end is the one a
user would make: one mask per good photo at its size, the masks written before the kill left
as they were, COCO's masks equal to the PNGs, YOLO-seg's polygons redrawn at IoU >= 0.95.
Writes JSON next to the table.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks._common import load, write_json  # noqa: E402
from data.annotations import read_yolo_polygons, yolo_mask  # noqa: E402
from models.build import build_model  # noqa: E402
from segmenter import from_checkpoint  # noqa: E402
from segmenter.api import Segmenter, make_loop  # noqa: E402
from segmenter.settings import from_values  # noqa: E402

FOLDERS = ["", "street/", "street/night/", "фото/", "фото/夜/"]


def _init(size: int, folder: str) -> str:
    """A B0 init at `size` with the demo's schedule, saved as adapted weights."""
    settings = from_values({"image_size": size, "rsd": (2, 4), "loss_name": "bce_dice",
                            "learning_rate": 0.001, "steps": 5, "batch_size": 4}, {})
    return Segmenter(make_loop(build_model(settings.model), settings), settings).save(folder)


def _photo(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth background with one ellipse: JPEG-friendly, like a photo, and its mask."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    mask = ((x - cx) / (0.2 * width)) ** 2 + ((y - cy) / (0.25 * height)) ** 2 < 1
    base = rng.integers(40, 200, size=3)
    image = (base + 30 * np.sin(x[..., None] / 97.0 + y[..., None] / 131.0)).astype(np.uint8)
    image[mask] = (220, 40, 40)
    return image, mask


def _tree(root: str, n: int, width: int, height: int, corrupt: bool = True) -> list[str]:
    """n photos in nested folders with non-Latin names, a.jpg beside a.png, two corrupt files
    (unless not `corrupt`); the good photos' relative paths."""
    rng = np.random.default_rng(n)
    good = []
    for i in range(n):
        rel = FOLDERS[i % len(FOLDERS)] + (f"снимок_{i}.jpg" if i % 3 else f"{i}.jpg")
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(_photo(rng, width, height)[0]).save(os.path.join(root, rel), quality=90)
        good.append(rel)
    Image.fromarray(_photo(rng, width // 2, height // 2)[0]).save(os.path.join(root, "0.png"))
    good.append("0.png")  # beside 0.jpg
    for rel in ("street/broken.jpg", "фото/empty.png") if corrupt else ():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(b"\xff\xd8 not a jpeg" if rel.endswith(".jpg") else b"")
    return good


def _task(root: str) -> str:
    """A task folder with three support examples at a phone-like size."""
    rng = np.random.default_rng(7)
    os.makedirs(os.path.join(root, "support"))
    for i in range(3):
        image, mask = _photo(rng, 1200, 900)
        Image.fromarray(image).save(os.path.join(root, "support", f"{i}.jpg"), quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            os.path.join(root, "support", f"{i}.png"))
    return root


def _mask_path(out: str, rel: str) -> str:
    folder, name = os.path.split(rel)
    stem = {"0.jpg": "0_jpg", "0.png": "0_png"}.get(rel, os.path.splitext(name)[0])
    return os.path.join(out, folder, f"{stem}_mask.png")


def speed(size: int, width: int, height: int, work: str) -> dict:
    """images/s and input wait of predict_folder at `size` on 48 photos (tracing excluded)."""
    seg = from_checkpoint(_init(size, os.path.join(work, f"init_{size}")))
    _tree(os.path.join(work, f"warm_{size}"), 8, width // 4, height // 4, corrupt=False)
    seg.predict_folder(os.path.join(work, f"warm_{size}"), os.path.join(work, f"warm_out_{size}"),
                       progress=False)
    tree = os.path.join(work, f"speed_{size}")
    _tree(tree, 48, width, height, corrupt=False)
    summary = seg.predict_folder(tree, os.path.join(work, f"speed_out_{size}"), progress=False)
    return {"size": size, "images": summary["segmented"],
            "images_per_s": summary["images_per_s"],
            "input_wait_share": summary["input_wait_share"]}


def _run_cli(argv: list[str], log: str, kill_after: int | None = None,
             records: str | None = None) -> tuple[int, float]:
    """Run the CLI in its own process; (exit status, peak resident MiB). With kill_after, send
    SIGKILL once that many images have records."""
    with open(log, "w") as f:
        child = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_metasegnet.py"), *argv],
                                 stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONPATH": ROOT})
        while kill_after is not None and child.poll() is None:
            if os.path.isdir(records) and sum(len(n) for _, _, n in os.walk(records)) >= kill_after:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def _check(photos: str, out: str, good: list[str], before: dict) -> dict:
    """What a user would check after the rerun (module docstring); the worst YOLO IoU."""
    from pycocotools.coco import COCO
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(os.path.join(out, "instances.json"))
    ids = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
    assert sorted(ids) == sorted(good), "COCO lists other images than the good photos"
    for rel, stat in before.items():
        now = os.stat(_mask_path(out, rel))
        assert (now.st_ino, now.st_mtime_ns) == stat, f"{rel}: rewritten after the kill"
    worst = 1.0
    for rel in good:
        with Image.open(_mask_path(out, rel)) as im, Image.open(os.path.join(photos, rel)) as ph:
            assert im.size == ph.size, rel
            png = np.asarray(im) > 0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[ids[rel]]))
        coco_mask = coco.annToMask(anns[0]) > 0 if anns else np.zeros_like(png)
        assert np.array_equal(coco_mask, png), f"{rel}: COCO mask differs from the PNG"
        stem = os.path.basename(_mask_path(out, rel))[:-len("_mask.png")]
        label = os.path.join(out, "labels", os.path.dirname(rel), stem + ".txt")
        if png.any():
            yolo = yolo_mask(read_yolo_polygons(label), *png.shape) > 0
            worst = min(worst, (yolo & png).sum() / (yolo | png).sum())
    assert worst >= 0.95, f"a YOLO-seg polygon redraws at IoU {worst:.3f}"
    return {"masks": len(good), "worst_yolo_iou": float(worst), "untouched": len(before)}


def memory(counts: list[int], width: int, height: int, work: str) -> list[dict]:
    """Peak memory of the CLI on a tree of each count, each run fitting its own task folder's
    examples; then, on the largest tree, a run killed a third of the way and rerun."""
    init = _init(64, os.path.join(work, "init_cli"))
    rows = []
    for n in counts + [max(counts)]:
        killed = len(rows) == len(counts)
        name = f"{n}_killed" if killed else str(n)
        photos = os.path.join(work, f"photos_{n}")
        out = os.path.join(work, f"masks_{name}")
        good = _tree(photos, n, width, height) if not os.path.isdir(photos) else \
            _tree_rels(photos)
        argv = ["--fine-tune-task", _task(os.path.join(work, f"task_{name}")), "--checkpoint",
                init, "--query_dir", photos, "--masks_dir", out,
                "--mask_format", "png", "coco", "yolo"]
        row, before = {"photos": n, "good": len(good), "killed": killed}, {}
        if killed:
            status, row["killed_run_peak_mib"] = _run_cli(
                argv, os.path.join(work, f"killed_{n}.log"), kill_after=n // 3,
                records=os.path.join(out, ".metaseg", "images"))
            assert status == -signal.SIGKILL, f"the run ended ({status}) before it was killed"
            before = {rel: (s.st_ino, s.st_mtime_ns) for rel in good
                      if os.path.exists(_mask_path(out, rel))
                      for s in [os.stat(_mask_path(out, rel))]}
        log = os.path.join(work, f"run_{name}.log")
        status, row["peak_mib"] = _run_cli(argv, log)
        with open(log, encoding="utf-8") as f:
            printed = f.read()
        assert status == 0, printed[-3000:]
        row.update(_check(photos, out, good, before))
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
            row["skipped"] = [rel for rel, _ in json.load(f)["skipped"]]
        row["resumed"] = next((line.split("resuming:")[1].strip() for line in printed.splitlines()
                               if "resuming:" in line), None)
        rows.append(row)
    return rows


def _tree_rels(photos: str) -> list[str]:
    """The good photos of a tree _tree made (its corrupt files left out)."""
    return sorted(os.path.relpath(os.path.join(d, f), photos) for d, _, names in os.walk(photos)
                  for f in names if f not in ("broken.jpg", "empty.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--photos", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--json", default="benchmarks/results/bench_folder.json")
    args = parser.parse_args()
    print(load())
    with tempfile.TemporaryDirectory() as work:
        speeds = [speed(size, args.width, args.height, work) for size in args.sizes]
        print(f"\npredict_folder on {args.width}x{args.height} JPEGs (EfficientLab-B0):")
        print("| size | images/s | share of time waiting on input |\n|---|---|---|")
        for row in speeds:
            print(f"| {row['size']} px | {row['images_per_s']:.2f} | "
                  f"{row['input_wait_share']:.0%} |")
        rows = memory(args.photos, args.width, args.height, work)
    print(f"\n--fine-tune-task --query_dir TREE --mask_format png coco yolo, "
          f"{args.width}x{args.height} JPEGs, 64 px init:")
    print("| photos | run | peak memory (MiB) | resumed | masks | skipped | worst YOLO IoU |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        if row["killed"]:
            print(f"| {row['photos']} | fit, killed a third of the way | "
                  f"{row['killed_run_peak_mib']:.0f} | | | | |")
        run = "rerun (weights reused)" if row["killed"] else "fit and segment"
        print(f"| {row['photos']} | {run} | {row['peak_mib']:.0f} | {row['resumed'] or '-'} | "
              f"{row['masks']} ({row['untouched']} untouched) | {', '.join(row['skipped'])} | "
              f"{row['worst_yolo_iou']:.3f} |")
    write_json(args.json, {"speed": speeds, "memory": rows, "width": args.width,
                           "height": args.height})


if __name__ == "__main__":
    main()
