"""Labelling a dataset from the command line: a tree of photos (nested folders, non-Latin names,
a.jpg beside a.png, a corrupt file) segmented with --query_dir/--masks_dir/--mask_format, killed
with SIGKILL midway and rerun: the rerun reuses the adapted weights, resumes, leaves the masks
written before the kill untouched, and ends with one mask per good photo in every format; other
settings over the same masks folder are refused unless --restart; the adapted weights segment
another folder as they are."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from data.annotations import read_yolo_polygons, yolo_mask
from tests.fixtures.meta_fixtures import red_square
from tests.segmenter.test_segment_cli import _folder
from tests.segmenter.test_segmenter_api import run  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_PHOTOS = 240


def _cli(*argv, cwd):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_metasegnet.py"), *argv],
                            cwd=cwd, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _photos(root):
    rng = np.random.default_rng(0)
    good = []
    for i in range(NUM_PHOTOS):
        rel = ["", "street/", "street/night/", "фото/"][i % 4] + f"{i}.jpg"
        image, _ = red_square(rng, 320 + i % 7, 240)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel, quality=90)
        good.append(rel)
    image, _ = red_square(rng, 300, 200)
    Image.fromarray(image).save(root / "0.png")  # beside 0.jpg: both are photos
    good.append("0.png")
    (root / "street" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return good


def _mask_path(out, rel):
    folder, name = os.path.split(rel)
    stem = {"0.jpg": "0_jpg", "0.png": "0_png"}.get(rel, os.path.splitext(name)[0])
    return out / folder / f"{stem}_mask.png"


def test_a_killed_run_resumes_to_one_mask_per_good_photo(run, tmp_path):  # noqa: F811
    task = _folder(tmp_path / "task")
    photos, out = tmp_path / "photos", tmp_path / "masks"
    good = _photos(photos)
    flags = ["--fine-tune-task", str(task), "--checkpoint", run, "--query_dir", str(photos),
             "--masks_dir", str(out), "--mask_format", "png", "coco", "yolo"]
    first = _cli(*flags, cwd=tmp_path)
    records = out / ".metaseg" / "images"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if records.is_dir() and sum(len(f) for _, _, f in os.walk(records)) >= 20:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    before = {rel: os.stat(_mask_path(out, rel)) for rel in good
              if os.path.exists(_mask_path(out, rel))}
    assert 20 <= len(before) < len(good), "the run was not killed midway"

    second = _cli(*flags, cwd=tmp_path)
    printed, _ = second.communicate(timeout=600)
    assert second.returncode == 0, printed[-3000:]
    assert "Reusing the adapted weights" in printed and "Fine-tuning" not in printed
    resumed = re.search(r"resuming: (\d+) of (\d+) done", printed)
    assert resumed and int(resumed.group(2)) == len(good) + 1  # the broken file counts
    # Done: the images with a record; a mask of the batch being written when the run was
    # killed has none, and is written again.
    assert 20 <= int(resumed.group(1)) <= len(before)
    assert "street/broken.jpg: cannot be read" in printed
    for rel, stat in before.items():  # what the killed run wrote is left as it was
        now = os.stat(_mask_path(out, rel))
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), rel
    coco = COCO(str(out / "instances.json"))
    names = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
    assert sorted(names) == sorted(good)
    for rel in good:
        with Image.open(_mask_path(out, rel)) as im, Image.open(photos / rel) as photo:
            assert im.size == photo.size
            png = np.asarray(im) > 0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[names[rel]]))
        coco_mask = coco.annToMask(anns[0]) > 0 if anns else np.zeros_like(png)
        np.testing.assert_array_equal(coco_mask, png, err_msg=rel)
        label = out / "labels" / os.path.dirname(rel) / (
            _mask_path(out, rel).name[:-len("_mask.png")] + ".txt")
        yolo = yolo_mask(read_yolo_polygons(str(label)), *png.shape) > 0
        if png.any():
            assert (yolo & png).sum() / (yolo | png).sum() >= 0.95, rel
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["skipped"] == [["street/broken.jpg", summary["skipped"][0][1]]]
    assert len(summary["queries"]) == len(good)


def test_settings_and_segmenting_with_the_adapted_weights(run, tmp_path):  # noqa: F811
    task = _folder(tmp_path / "task")
    out = tmp_path / "masks"
    common = ["--fine-tune-task", str(task), "--checkpoint", run, "--masks_dir", str(out)]
    done = _cli(*common, cwd=tmp_path)
    assert done.wait(timeout=300) == 0
    other = _cli(*common, "--eval-iters", "1", cwd=tmp_path)
    printed, _ = other.communicate(timeout=300)
    assert other.returncode == 2 and "holds masks of other settings than this run's; pass " \
                                      "--restart" in printed, printed[-2000:]
    assert "Fine-tuning" not in printed  # refused before the fit
    (out / "mine.txt").write_text("notes")
    again = _cli(*common, "--eval-iters", "1", "--restart", cwd=tmp_path)
    printed, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "Fine-tuning" in printed, printed[-2000:]
    assert (out / "mine.txt").read_text() == "notes"
    # The adapted weights segment another folder as they are (no examples, no fit).
    elsewhere, masks = tmp_path / "more", tmp_path / "more_masks"
    elsewhere.mkdir()
    Image.fromarray(red_square(np.random.default_rng(3), 64, 48)[0]).save(elsewhere / "x.jpg")
    weights = str(task / "fine_tuned_checkpoint")
    only = _cli("--checkpoint", weights, "--query_dir", str(elsewhere), "--masks_dir",
                str(masks), cwd=tmp_path)
    printed, _ = only.communicate(timeout=300)
    assert only.returncode == 0 and (masks / "x_mask.png").exists(), printed[-2000:]
    refused = _cli("--checkpoint", run, "--query_dir", str(elsewhere), "--masks_dir",
                   str(tmp_path / "m2"), cwd=tmp_path)
    printed, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "segments with adapted weights as they are" in printed


@pytest.mark.parametrize("argv, message", [
    (["--query_dir", "q", "--checkpoint", "c"], "--masks_dir OUT is needed by --query_dir"),
    (["--masks_dir", "m", "--data-dir", "x"], "--masks_dir is not read by meta-learning runs"),
])
def test_the_masks_flags_belong_to_the_modes_that_segment_a_folder(argv, message, capsys):
    from args import build_parser, parse_args
    from mode_flags import check_mode_flags, mode_of
    with pytest.raises(SystemExit):
        check_mode_flags(build_parser(), mode_of(parse_args(argv)), argv)
    assert message in capsys.readouterr().err
