"""Meta-transfer learning through run_metasegnet.py at 32 px: pre_train -> meta_train -> meta_eval,
base kernels bit-identical to the pre-trained ones, class-level split guards, clear errors."""
import dataclasses
import json
import os

import numpy as np
import pytest

from modes.final_eval import RESULTS_NAME
import run_metasegnet
from tests.fixtures.mtl_run import phase_argv

from models.build import build_model
from models.config import ModelConfig
from models.mtl import set_mtl_mode
from args import parse_args
from modes.mtl import _base_kernels
from modes.mtl_checks import CLASSES_NAME, check_phase
from storage import checkpoint

UNET = ModelConfig(model_name="unet", image_size=32, n_unet_encoding_stacks=2,
                   start_num_feature_maps_power=2)


@pytest.fixture(scope="module")
def shards(mtl_shards):
    return mtl_shards


def _argv(shards, run_dir, phase, *extra, seed="1"):
    return phase_argv(shards, run_dir, phase, *extra, seed=seed)


@pytest.fixture(scope="module")
def three_phases(mtl_three_phases):
    return mtl_three_phases


def test_three_phases_write_their_outputs(three_phases):
    run_dir, status = three_phases
    assert status == {"pre_train": 0, "meta_train": 0, "meta_eval": 0}
    for phase in ("pre_train", "meta_train", "meta_eval"):
        with open(run_dir / phase / "config.json") as f:
            assert json.load(f)["mtl"]["phase"] == phase
    assert (run_dir / "pre_train" / "best.weights.h5").is_file()
    assert checkpoint.read_state(str(run_dir / "meta_train"))["step"] == 4  # 2 epochs x 2 tasks
    with open(run_dir / "meta_eval" / RESULTS_NAME) as f:
        results = json.load(f)
    assert results["split"] == "test" and results["num_classes"] == 2
    assert results["meta_iterations"] == 4
    assert results["pretrained_fine_tuned"]["num_task_samples"] == results["num_task_samples"]
    assert results["config"]["eval"]["shots"] == 2 and results["config"]["adapt"]["steps"] == 2
    with open(run_dir / "meta_train" / CLASSES_NAME) as f:
        seen = json.load(f)
    evaluated = set(results["per_task"])
    assert evaluated == set(seen["test"])
    assert not evaluated & (set(seen["trained_on"]) | set(seen["selected_on"]))


def test_meta_training_left_every_base_kernel_bit_identical(three_phases):
    run_dir, _ = three_phases
    unet = build_model(UNET)
    unet.load_weights(str(run_dir / "pre_train" / "best.weights.h5"))
    pretrained = {v.path: v.numpy() for v in unet.variables}
    mtl = build_model(dataclasses.replace(UNET, model_name="mtl_unet"))
    set_mtl_mode(mtl, "meta_transfer")
    frozen = [v.path for v in _base_kernels(mtl)]
    path = checkpoint.latest_checkpoint(str(run_dir / "meta_train"))
    described = checkpoint.read_state(path)["variables"]["model"]
    with np.load(os.path.join(path, "variables.npz")) as f:
        trained = {d[0]: f[f"model/{i:05d}"] for i, d in enumerate(described)}
    assert len(frozen) >= 12
    for p in frozen:
        np.testing.assert_array_equal(trained[p], pretrained[p], err_msg=p)
    head = "final_layer_weights/kernel"
    assert not np.array_equal(trained[head], pretrained[head])  # the head init was meta-learned


def test_meta_eval_refuses_classes_seen_in_training(three_phases, shards, tmp_path, capsys):
    run_dir, _ = three_phases  # another --seed draws other test classes
    status = run_metasegnet.main(_argv(shards, tmp_path, "meta_eval", "--eval_weights",
                                       str(run_dir / "meta_train"), seed="3"))
    assert status == 2
    assert "was trained or selected on" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_meta_train_needs_init_weights(shards, tmp_path, capsys):
    assert run_metasegnet.main(_argv(shards, tmp_path, "meta_train")) == 2
    assert "--init_weights" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def _listing(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_pre_training_resumes_only_with_its_own_config(three_phases, shards, capsys):
    """A finished pre-training rerun with another loss and learning rate would go on from its
    last epoch into a hybrid model: refused like a meta-training resume, nothing written."""
    run_dir, _ = three_phases
    before = _listing(run_dir / "pre_train")
    assert run_metasegnet.main(_argv(shards, run_dir, "pre_train", "--pre_max_epoch", "3",
                                     "--pre_batch_size", "8", "--pre_lr", "0.2",
                                     "--loss_name", "dice")) == 2
    err = capsys.readouterr().err.strip()
    assert "Cannot resume" in err and "mtl.pre_lr: checkpoint 0.05, this run 0.2" in err
    assert "loss.loss_name: checkpoint 'ce_dice', this run 'dice'" in err
    assert _listing(run_dir / "pre_train") == before
    # the same flags with a longer schedule (and the data folder by another path) resume
    other_path = os.path.relpath(shards)
    cfg = parse_args(_argv(other_path, run_dir, "pre_train", "--pre_max_epoch", "3",
                           "--pre_batch_size", "8", "--pre_lr", "0.05"))
    check_phase(cfg, None, (), str(run_dir / "pre_train"))
