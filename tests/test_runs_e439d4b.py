"""Every kind of run folder the version before the one adaptation type wrote (commit e439d4b, its
config.json layouts: `inner`, `eval.eval_iters`, `model.final_layer_dropout_rate`) still loads,
evaluates and resumes, and ends where that version ended.

tests/fixtures/runs_e439d4b/ holds what `generate.sh` wrote with e439d4b: a Reptile run
(meta/), fine-tuned weights and masks of a task folder (task/), an MTL run (mtl/: pre_train,
meta_train, meta_eval) and a joint-training run (joint/); `expected/` holds that version's
weights after one more meta-iteration / task / epoch, its results, and the settings its
`from_checkpoint` read from each init. The data is regenerated here with the fixture's commands
(tests/test_saved_run_compat.py), and every command runs with the fixture's relative paths.
"""
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from segmenter.inits import find_init
from segmenter.settings import resolve
from storage.checkpoint import latest_checkpoint
from tests.test_saved_run_compat import _cli, _npz_members, shards  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "runs_e439d4b")
EXPECTED = os.path.join(FIXTURE, "expected")
COMMON = ["--data-dir", "shards", "--image_size", "32", "--n_unet_encoding_stacks", "2",
          "--start_num_feature_maps_power", "2", "--num_test_tasks", "2", "--monitor_tasks", "1",
          "--eval-samples", "1", "--serially_eval_all_test_tasks", "--seed", "3"]
META = COMMON + [
    "--model_name", "unet", "--checkpoint", "meta", "--train-shots", "4", "--inner-iters", "2",
    "--inner-batch", "2", "--meta-batch", "2", "--eval-interval", "1", "--eval-iters", "3",
    "--eval-batch", "2", "--shots", "2", "--augment", "--aug_rate", "0.3", "--augmentation",
    "metaseg", "--final_layer_dropout_rate", "0.2", "--learning_rate_scheduler", "step_decay",
    "--step_decay_rate", "0.7", "--decay_after_n_steps", "1", "--replacement", "--weight-decay",
    "0.999", "--learning-rate", "0.05", "--sgd", "--keep_checkpoints", "2", "--meta-step", "0.5",
    "--meta-step-final", "0.1", "--loss_name", "bce_dice", "--l2"]
MTL = COMMON + ["--model_name", "mtl_unet", "--checkpoint", "mtl", "--num_val_tasks", "1",
                "--loss_name", "ce_dice", "--shot", "2", "--train_query", "1", "--val_query", "1",
                "--final_layer_dropout_rate", "0.1"]
MTL_META_TRAIN = MTL + ["--phase", "meta_train", "--init_weights", "mtl/pre_train",
                        "--num_batch", "1", "--update_step", "2", "--base_lr", "0.05"]
JOINT = COMMON + ["--model_name", "unet", "--checkpoint", "joint", "--joint_train",
                  "--inner-batch", "4", "--learning-rate", "0.01", "--eval-iters", "2",
                  "--shots", "2", "--final_layer_dropout_rate", "0.1"]
# What this version reads differently, on purpose: an MTL init adapts its head with the
# dropout it was trained and evaluated with (--final_layer_dropout_rate), as --phase meta_eval
# does; e439d4b's from_checkpoint used 0 there. The model section no longer holds the dropout.
CHANGED = {("mtl", "adapt", "dropout_rate"): 0.1, ("mtl/pre_train", "adapt", "dropout_rate"): 0.1}


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def work(shards, tmp_path):  # noqa: F811
    """tmp_path with the regenerated `shards/` and a copy of every fixture run."""
    os.symlink(shards, tmp_path / "shards")
    for name in ("meta", "mtl", "joint", "task"):
        shutil.copytree(os.path.join(FIXTURE, name), tmp_path / name)
    return tmp_path


def _assert_weights(run, expected_npz):
    got = _npz_members(os.path.join(latest_checkpoint(str(run)), "variables.npz"))
    want = _npz_members(os.path.join(EXPECTED, expected_npz))
    assert got.keys() == want.keys()
    for key in want:  # bit for bit on the machine that wrote them; ~1e-8 on another CPU
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)


def test_every_init_reads_the_settings_it_was_written_with(tmp_path):
    cwd = os.getcwd()
    os.chdir(FIXTURE)  # the paths recorded in the fixtures are relative to it
    try:
        for path, expected in _json(os.path.join(EXPECTED, "settings.json")).items():
            settings = resolve(find_init(path), {})
            for section in ("model", "loss", "adapt"):
                got = json.loads(json.dumps(dataclasses.asdict(getattr(settings, section))))
                for name, value in expected[section].items():
                    if name == "final_layer_dropout_rate":  # now the adaptation's dropout_rate
                        assert settings.adapt.dropout_rate == \
                            CHANGED.get((path, "adapt", "dropout_rate"), value), path
                        continue
                    assert got[name] == CHANGED.get((path, section, name), value), \
                        (path, section, name)
    finally:
        os.chdir(cwd)


def test_a_reptile_run_resumes_to_the_weights_and_score_its_version_reached(work):
    out = _cli(work, *META, "--meta-iters", "3")
    assert re.search(r"Resuming meta-training from \S*ckpt-0*2 at meta-iteration 2", out), \
        out[-3000:]
    _assert_weights(work / "meta", "meta_ckpt-00000003_variables.npz")
    results = _json(work / "meta" / "meta-test_results.json")
    expected = _json(os.path.join(EXPECTED, "meta_continued_results.json"))
    assert results["per_task"] == pytest.approx(expected["per_task"], abs=1e-4)
    config = _json(work / "meta" / "config.json")
    assert "inner" not in config and config["adapt"]["dropout_rate"] == 0.2
    assert config["meta"]["inner"]["steps"] == 2 and config["adapt"]["steps"] == 3


def test_a_reptile_run_evaluates_and_adapts_a_task_folder_as_its_version_did(work):
    recorded = _json(os.path.join(FIXTURE, "meta", "meta-test_results.json"))
    _cli(work, *META, "--meta-iters", "2", "--pretrained")
    results = _json(work / "meta" / "meta-test_results.json")
    assert results["per_task"] == pytest.approx(recorded["per_task"], abs=1e-4)
    out = _cli(work, "--fine-tune-task", "task", "--checkpoint", "meta", "--eval-iters", "2",
               "--learning-rate", "0.01")
    assert "--learning-rate 0.01 overrides the init's 0.05" in out
    for name in ("q2_mask.png", "q3_mask.png"):
        with Image.open(work / "task" / "predictions" / name) as now, \
                Image.open(os.path.join(FIXTURE, "task", "predictions", name)) as then:
            np.testing.assert_array_equal(np.asarray(now), np.asarray(then), err_msg=name)


def test_mtl_phases_resume_and_evaluate_as_their_version_did(work):
    out = _cli(work, *MTL_META_TRAIN, "--max_epoch", "3")
    assert "Resuming MTL meta-training" in out, out[-3000:]
    _assert_weights(work / "mtl" / "meta_train", "mtl_meta_train_ckpt-00000003_variables.npz")
    shutil.rmtree(work / "mtl")
    shutil.copytree(os.path.join(FIXTURE, "mtl"), work / "mtl")
    _cli(work, *MTL, "--phase", "meta_eval", "--eval_weights", "mtl/meta_train",
         "--init_weights", "mtl/pre_train", "--teshot", "2", "--test_query", "2",
         "--update_step", "2", "--base_lr", "0.05")
    results = _json(work / "mtl" / "meta_eval" / "meta-test_results.json")
    recorded = _json(os.path.join(FIXTURE, "mtl", "meta_eval", "meta-test_results.json"))
    assert results["per_task"] == pytest.approx(recorded["per_task"], abs=1e-4)
    assert results["pretrained_fine_tuned"]["per_task"] == \
        pytest.approx(recorded["pretrained_fine_tuned"]["per_task"], abs=1e-4)


def test_a_joint_training_run_resumes_to_its_version_s_weights(work):
    _cli(work, *JOINT, "--joint_train_epochs", "2")
    _assert_weights(work / "joint", "joint_ckpt-00000002_variables.npz")
    results = _json(work / "joint" / "meta-test_results.json")
    expected = _json(os.path.join(EXPECTED, "joint_continued_results.json"))
    assert results["per_task"] == pytest.approx(expected["per_task"], abs=1e-4)
