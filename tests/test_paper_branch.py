"""The paper's downloads as they are: run.sh's paper branch end to end, and damaged shards."""
import json
import os
import subprocess

import numpy as np
import pytest

import run_metasegnet
from meta.tf1_synthetic import write_synthetic_checkpoint
from paper_shards_writer import paper_record, write_paper_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = "EfficientLab-6-3_FOMAML-star_checkpoint"
SIZE = 224


def _pair(rng, size=SIZE):
    """A noisy image with a brighter box and its 0/255 mask."""
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    mask[y:y + size // 3, x:x + size // 3] = 255
    image = rng.integers(0, 100, (size, size, 3), dtype=np.uint8) + (mask[..., None] // 2)
    return image.astype(np.uint8), mask


def _write_class(path, rng, n=10):
    write_paper_shard(str(path), [paper_record(*_pair(rng)) for _ in range(n)])


@pytest.fixture(scope="module")
def paper_repo(tmp_path_factory):
    """A copy of the repo (links) with the paper's downloads in place: shards, test list, TF1 ckpt."""
    repo = tmp_path_factory.mktemp("paper_repo")
    for entry in os.listdir(ROOT):
        if entry not in (".git", "fewshot_shards", CHECKPOINT, "fss_test_set.txt"):
            os.symlink(os.path.join(ROOT, entry), repo / entry)
    rng = np.random.default_rng(0)
    (repo / "fewshot_shards").mkdir()
    for name in ("bus", "cat", "zebra"):
        _write_class(repo / "fewshot_shards" / f"{name}.tfrecord.gzip", rng)
    (repo / "fss_test_set.txt").write_text("bus\r\ncat\r\n")  # CRLF, as the published list
    write_synthetic_checkpoint(str(repo / CHECKPOINT), rsd=(2, 4), step=49999)
    return repo


def test_run_sh_paper_branch_evaluates_the_paper_downloads(paper_repo):
    proc = subprocess.run(["./run.sh", "--eval-iters", "2", "--eval-samples", "1"], cwd=paper_repo,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Reading --data-dir fewshot_shards/ as the paper's per-class shards" in out
    assert "Restored TF1 checkpoint" in out and "'backbone': 209" in out
    assert "Classes: 1 meta-train, 0 meta-val, 2 meta-test." in out
    line = [l for l in out.splitlines() if l.startswith("Mean IoU over all meta-test tasks: ")]
    assert len(line) == 1 and 0.0 <= float(line[0].split(": ")[1]) <= 1.0
    results = json.loads((paper_repo / CHECKPOINT / "meta-test_results.json").read_text())
    assert results["mean_iou"] == pytest.approx(float(line[0].split(": ")[1]))
    assert sorted(results["per_task"]) == ["bus", "cat"]


@pytest.mark.parametrize("damage", ["truncated", "wrong_length", "empty"])
def test_damaged_paper_shards_exit_2_in_one_line_and_write_nothing(damage, tmp_path, capsys):
    rng = np.random.default_rng(1)
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("bus", "cat"):
        _write_class(shards / f"{name}.tfrecord.gzip", rng, n=3)
    bad = shards / "zebra.tfrecord.gzip"
    if damage == "truncated":
        _write_class(bad, rng, n=3)
        bad.write_bytes(bad.read_bytes()[:-5000])
    elif damage == "wrong_length":
        write_paper_shard(str(bad), [paper_record(*_pair(rng, 112))])
    else:
        write_paper_shard(str(bad), [])
    run = tmp_path / "run"
    status = run_metasegnet.main(["--data-dir", str(shards), "--image_size", "224",
                                  "--num_test_tasks", "1", "--checkpoint", str(run)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert status == 2
    assert len(err) == 1 and err[0].startswith("run_metasegnet.py: error: Paper shard "), err
    assert str(bad) in err[0]
    assert not run.exists()
