"""A run directory written by an earlier metaseg (tests/fixtures/run_2026_12) still resumes,
evaluates and loads: through the CLI, and with meta.checkpoint in-process.

The fixture's README names the commit and the command that wrote it. The test regenerates the
same tiny data with the same commands and runs everything with the fixture's relative paths
(cwd = a temporary folder holding `shards/` and `run/`), so the recorded config is the test's.
"""
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

# The library imports of this file: everything else goes through the command line.
from args import parse_args
from meta.settings import read_config
from models.build import build_model
from storage.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, read_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "run_2026_12")
DEMO = ["-m", "data.demo", "--out_dir", "fss", "--num_classes", "5", "--images_per_class", "8",
        "--image_size", "32", "--seed", "0"]
CONVERT = [os.path.join(ROOT, "fss_1000_image_to_tfrecord.py"), "--input_dir", "fss",
           "--tfrecord_dir", "shards", "--image_size", "32"]
# The fixture's training flags (all but --meta-iters, which was 2).
FLAGS = ["--data-dir", "shards", "--checkpoint", "run", "--image_size", "32",
         "--model_name", "unet", "--n_unet_encoding_stacks", "2",
         "--start_num_feature_maps_power", "2", "--num_test_tasks", "2", "--foml",
         "--train-shots", "4", "--inner-iters", "1", "--inner-batch", "4", "--meta-batch", "1",
         "--eval-interval", "1", "--monitor_tasks", "1", "--eval-iters", "3", "--eval-batch", "4",
         "--shots", "2", "--eval-samples", "1", "--serially_eval_all_test_tasks", "--augment",
         "--sgd", "--learning-rate", "0.1", "--keep_checkpoints", "2", "--seed", "1"]
FIXTURE_STEP = 2
# sha256 of the demo images and masks the fixture was trained on (see _image_digest).
DATA_DIGEST = "1cd922d95efdcbfe43913f8ad93224d3e93417213f5924d355e6587e211b487c"


def _python(cwd, *argv):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{argv[:2]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _cli(cwd, *argv):
    return _python(cwd, os.path.join(ROOT, "run_metasegnet.py"), *argv).stdout


def _image_digest(folder):
    """One hash over every image and mask file (names and bytes); TFRecord bytes are not
    stable across processes (protobuf map order), the decoded inputs are these files."""
    digest = hashlib.sha256()
    for d, _, files in sorted(os.walk(folder)):
        for name in sorted(f for f in files if not f.startswith(".")):
            path = os.path.join(d, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    work = tmp_path_factory.mktemp("saved_run_data")
    _python(work, *DEMO)
    assert _image_digest(work / "fss") == DATA_DIGEST, (
        "data.demo no longer draws the fixture's images; the fixture's numbers cannot be "
        "compared (regenerate it as tests/fixtures/README.md says)")
    _python(work, *CONVERT)
    return work / "shards"


@pytest.fixture
def work(shards, tmp_path):
    """tmp_path with `shards` (the regenerated data) and `run` (a copy of the fixture)."""
    os.symlink(shards, tmp_path / "shards")
    shutil.copytree(FIXTURE, tmp_path / "run")
    return tmp_path


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _log_rows(run_dir):
    with open(os.path.join(run_dir, "training_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _npz_members(path):
    """variables.npz read as the zip of .npy files it is, without np.load."""
    with zipfile.ZipFile(path) as z:
        out = {}
        for name in z.namelist():
            assert name.endswith(".npy"), name
            with z.open(name) as f:
                out[name[:-len(".npy")]] = np.lib.format.read_array(f)
    return out


def test_resume_continues_from_the_fixture_step_to_a_new_checkpoint(work):
    run = str(work / "run")
    saved = read_state(run)
    assert saved["step"] == FIXTURE_STEP
    out = _cli(work, *FLAGS, "--meta-iters", "4")
    assert re.search(rf"Resuming meta-training from \S*ckpt-0*{FIXTURE_STEP} at meta-iteration "
                     rf"{FIXTURE_STEP}\b", out), out[-3000:]
    state = read_state(run)
    assert state["step"] == 4 and latest_checkpoint(run).endswith("ckpt-00000004")
    # The resumed run adopts the fixture's run id, numbers on from it and prunes to --keep 2.
    assert state["run_id"] == saved["run_id"] and state["sequence"] == saved["sequence"] + 2
    assert [step for step, _ in list_checkpoints(run)] == [3, 4]
    rows, old = _log_rows(run), _log_rows(FIXTURE)
    assert [int(r["meta_iter"]) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[:len(old)] == old  # the fixture's rows are kept, not rewritten from step 0
    assert all(0.0 <= float(r["val_miou"]) <= 1.0 for r in rows)
    before = _npz_members(os.path.join(FIXTURE, "ckpt-00000002", "variables.npz"))
    after = _npz_members(os.path.join(latest_checkpoint(run), "variables.npz"))
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("model/"))
    assert _json(work / "run" / "config.json")["meta"]["meta_iters"] == 4
    # The fixture predates recorded task streams: it resumes with its one stream, and ends where
    # an uninterrupted run of that scheme ends (to the float rounding of another machine's
    # kernels, ~1e-8; another draw of the tasks would move the weights by far more).
    assert _json(work / "run" / "config.json")["meta"]["task_streams"] == "one_stream"
    _cli(work, *FLAGS, "--meta-iters", "4", "--checkpoint", "fresh", "--task_streams",
         "one_stream")
    uninterrupted = _npz_members(os.path.join(latest_checkpoint(str(work / "fresh")),
                                              "variables.npz"))
    for key in after:
        np.testing.assert_allclose(after[key], uninterrupted[key], rtol=0, atol=1e-6,
                                   err_msg=key)


def test_pretrained_evaluates_the_fixture_checkpoint(work):
    run = work / "run"
    out = _cli(work, *FLAGS, "--meta-iters", str(FIXTURE_STEP), "--pretrained")
    assert re.search(rf"Restored \S*ckpt-0*{FIXTURE_STEP} \(meta-iteration {FIXTURE_STEP}\)", out), \
        out[-3000:]
    results = _json(run / "meta-test_results.json")
    assert results["config"]["run"]["pretrained"] is True
    assert results["meta_iterations"] == FIXTURE_STEP and results["split"] == "test"
    assert 0.0 <= results["mean_iou"] <= 1.0 and len(results["per_task"]) == 2
    # Same checkpoint, same data, same episodes: the score the writing run recorded.
    recorded = _json(os.path.join(FIXTURE, "meta-test_results.json"))
    assert results["mean_iou"] == pytest.approx(recorded["mean_iou"], abs=1e-4)
    assert _json(run / "config.json") == _json(os.path.join(FIXTURE, "config.json"))


def test_fixture_checkpoint_loads_into_a_fresh_model(tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(FIXTURE, run)
    cfg = parse_args([*FLAGS, "--meta-iters", str(FIXTURE_STEP)])
    recorded = _json(os.path.join(FIXTURE, "config.json"))
    assert json.loads(cfg.to_json())["model"] == read_config(recorded)["model"]
    path = latest_checkpoint(run)
    on_disk = _npz_members(os.path.join(path, "variables.npz"))
    listed = _json(os.path.join(path, "state.json"))["variables"]
    for group in ("model", "inner_optimizer", "outer_optimizer"):
        keys = sorted(k for k in on_disk if k.startswith(f"{group}/"))
        assert keys == [f"{group}/{i:05d}" for i in range(len(listed[group]))], group
        for key, (_, shape, dtype) in zip(keys, listed[group]):
            assert list(on_disk[key].shape) == shape and str(on_disk[key].dtype) == dtype, key
    variables = list(build_model(cfg.model).variables)
    saved = [on_disk[f"model/{i:05d}"] for i in range(len(variables))]
    assert len(variables) == len(listed["model"])
    assert any(not np.array_equal(v.numpy(), a) for v, a in zip(variables, saved))
    state = load_checkpoint(path, {"model": variables})
    assert state["step"] == FIXTURE_STEP
    for v, a in zip(variables, saved):
        np.testing.assert_array_equal(v.numpy(), a, err_msg=v.path)
