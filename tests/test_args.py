"""The command line: the paper's line parses into the right configs; bad flags fail in one line."""
import json
import os
import subprocess
import sys

import pytest

from args import parse_args
from tests.fixtures.paper_line import PAPER_LINE as PAPER_LINE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER_LINE = PAPER_LINE_FLAGS + ["--checkpoint", "ckpt_dir", "--data-dir", "shard_dir"]


def test_paper_line_parses_into_the_paper_settings():
    cfg = parse_args(PAPER_LINE)
    assert cfg.model.rsd == (2, 4) and cfg.model.image_size == 224
    assert cfg.loss.loss_name == "bce_dice" and cfg.loss.l2
    for adaptation in (cfg.adapt, cfg.meta.inner):  # the inner loop's and evaluation's alike
        assert adaptation.sgd and adaptation.learning_rate == 0.0005
        assert adaptation.dropout_rate == 0.5 and adaptation.batch_size == 8
        assert adaptation.aug_rate == 0.5 and adaptation.augmentation == "paper"
        assert adaptation.steps == 59 and adaptation.seed == 0
    assert cfg.meta.algorithm == "fomaml" and cfg.meta.foml_tail == 5
    assert cfg.meta.train_shots == 10 and cfg.meta.meta_batch_size == 5
    assert cfg.meta.meta_step_size == 0.1 and cfg.meta.meta_step_size_final == 0.00001
    assert cfg.eval.shots == 5 and cfg.eval.transductive
    assert cfg.eval.serially_eval_all_test_tasks and cfg.eval.eval_samples == 2
    assert cfg.run.pretrained and cfg.run.checkpoint == "ckpt_dir"
    assert cfg.data.data_dir == "shard_dir" and cfg.data.fss_1000
    # The resolved config is JSON-serializable (it is written next to every run's outputs).
    assert json.loads(cfg.to_json())["meta"]["foml_tail"] == 5


def test_defaults_are_reptile_and_no_predictions(monkeypatch):
    monkeypatch.delenv("SAVE_PREDICTIONS", raising=False)
    cfg = parse_args([])
    assert cfg.meta.algorithm == "reptile" and cfg.meta.foml_tail is None
    assert cfg.eval.predictions_dir is None
    assert parse_args(["--augmentation", "metaseg"]).adapt.augmentation == "metaseg"


@pytest.mark.parametrize("value,enabled", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_save_predictions_zero_means_off(monkeypatch, value, enabled):
    monkeypatch.setenv("SAVE_PREDICTIONS", value)
    assert (parse_args([]).eval.predictions_dir is not None) == enabled


@pytest.mark.parametrize("argv,needle", [
    (["--foml-tail", "5"], "--foml-tail needs --foml"),
    (["--foml", "--foml-tail", "5", "--train-shots", "5"], "--foml-tail must be in"),
    (["--pretrained", "--continue_training_from_checkpoint", "x"], "give one"),
    (["--optimize_update_hyperparms_on_val_set"], "--num_val_tasks >= 1"),
    (["--phase", "pre_train", "--model_name", "unet"], "needs --model_name mtl_unet"),
    (["--rsd", "5"], "--rsd takes reductions 1..4"),
    (["--augment", "--aug_rate", "1.5"], "--aug_rate must be a finite number in [0, 1]"),
    (["--aug_rate", "0.3"], "--aug_rate 0.3 augments only with --augment"),
    (["--eval-iters", "-1"], "--eval-iters must be a whole number >= 0"),
    (["--augmentation", "numpy"], "--augmentation: invalid choice"),
    (["--inner-iters", "0"], "--inner-iters must be >= 1"),
])
def test_contradictory_or_bad_flags_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_flag_is_one_line_error_from_the_cli():
    proc = subprocess.run([sys.executable, "-c",
                           "import sys; from args import parse_args; parse_args(sys.argv[1:])",
                           "--no_such_flag"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "run_metasegnet.py: error: unrecognized arguments: --no_such_flag"]


def test_k_shot_defaults_follow_the_reference():
    """The reference's k grid {1, 5, 10, 50, 100, 200, 400}, steps by early stopping from k = 10."""
    cfg = parse_args(["--data-dir", "x"])
    assert cfg.kshot.k_values == (1, 5, 10, 50, 100, 200, 400)
    assert cfg.kshot.k_shot_iter_range is None


@pytest.mark.parametrize("flag, value", [("--learning-rate", "inf"), ("--meta-step", "nan"),
                                         ("--meta-step-final", "-inf"), ("--aug_rate", "nan"),
                                         ("--lr_search_range_high", "inf")])
def test_non_finite_flag_values_are_refused_at_parse_time(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([f"{flag}={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be a finite number" in err and value in err
