"""run_metasegnet.py end to end at 32 px: outputs, exact resume, --pretrained, clear errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data.demo import make_demo_dataset
from modes import restore, setup
import run_metasegnet
from fss_1000_image_to_tfrecord import convert

from storage import checkpoint
from tests.fixtures.paper_line import PAPER_LINE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def _cli(*argv):
    return subprocess.run([sys.executable, "run_metasegnet.py", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _error_lines(stderr):
    """Our lines of stderr: TensorFlow's C++ start-up notices (absl, CUDA probing) dropped."""
    noise = ("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 ")
    return [l for l in stderr.strip().splitlines() if l.strip() and not l.startswith(noise)]


def test_paper_line_reaches_the_data_and_fails_in_one_clear_line(tmp_path):
    proc = _cli(*PAPER_LINE, "--checkpoint", str(tmp_path), "--data-dir",
                str(tmp_path / "no_shards"))
    assert proc.returncode == 2
    err = _error_lines(proc.stderr)
    assert len(err) == 1 and err[0].startswith("run_metasegnet.py: error: "), proc.stderr
    assert "no_shards" in err[0] and "fss_1000_image_to_tfrecord.py" in err[0]


def test_contradictory_flags_one_line_error():
    proc = _cli("--foml-tail", "3", "--data-dir", "x")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [
        "run_metasegnet.py: error: --foml-tail needs --foml (FOMAML* is FOMAML with a held-out "
        "tail)."]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_data")
    make_demo_dataset(str(root / "fss"), num_classes=5, images_per_class=8, image_size=32, seed=0)
    convert(str(root / "fss"), str(root / "shards"), image_size=32, log=None)
    return str(root / "shards")


def _argv(shards, run_dir, *extra):
    return ["--data-dir", shards, "--image_size", "32", "--num_test_tasks", "2",
            "--checkpoint", run_dir, "--foml", "--foml-tail", "2", "--train-shots", "6",
            "--inner-iters", "2", "--inner-batch", "4", "--meta-iters", "3", "--meta-batch", "2",
            "--eval-interval", "2", "--monitor_tasks", "1", "--eval-iters", "2",
            "--eval-batch", "4", "--shots", "2", "--eval-samples", "1",
            "--serially_eval_all_test_tasks", "--transductive", "--augment", "--sgd",
            "--learning-rate", "0.01", "--final_layer_dropout_rate", "0.2", "--seed", "1",
            *extra]


def _final_weights(run_dir):
    path = checkpoint.latest_checkpoint(run_dir)
    with np.load(os.path.join(path, "variables.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def finished_run(shards, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run_a"))
    return run_dir


def test_end_to_end_run_writes_every_output(shards, finished_run, capsys):
    assert run_metasegnet.main(_argv(shards, finished_run, "--compare_random_init")) == 0
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith("Mean IoU over all meta-test tasks: ")]
    assert len(line) == 1 and 0.0 <= float(line[0].split(": ")[1]) <= 1.0
    for name in ("config.json", "training_log.csv", "training_curves.png", "meta-test_results.json",
                 "LAST"):
        assert os.path.isfile(os.path.join(finished_run, name)), name
    assert [s for s, _ in checkpoint.list_checkpoints(finished_run)] == [2, 3]
    results = json.load(open(os.path.join(finished_run, "meta-test_results.json")))
    assert results["split"] == "test" and len(results["per_task"]) == 2
    assert results["mean_iou"] == pytest.approx(float(line[0].split(": ")[1]))
    assert "random_init" in results and "class_accumulated_iou" in results
    assert results["config"]["meta"]["foml_tail"] == 2
    config = json.load(open(os.path.join(finished_run, "config.json")))
    assert config["adapt"]["sgd"] is True and config["meta"]["inner"]["sgd"] is True


def test_interrupted_run_resumes_to_identical_weights(shards, finished_run, tmp_path, monkeypatch,
                                                      capsys):
    run_dir = str(tmp_path / "run_b")
    real = run_metasegnet.meta_train_loop
    monkeypatch.setattr(run_metasegnet, "meta_train_loop",
                        lambda *a, **k: real(*a, **{**k, "stop_after": 2}))  # "killed" after 2
    run_metasegnet.main(_argv(shards, run_dir, "--compare_random_init"))
    assert checkpoint.read_state(run_dir)["step"] == 2
    monkeypatch.setattr(run_metasegnet, "meta_train_loop", real)
    assert run_metasegnet.main(_argv(shards, run_dir, "--compare_random_init")) == 0
    assert "Resuming meta-training from" in capsys.readouterr().out
    a, b = _final_weights(finished_run), _final_weights(run_dir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ra = json.load(open(os.path.join(finished_run, "meta-test_results.json")))
    rb = json.load(open(os.path.join(run_dir, "meta-test_results.json")))
    assert ra["per_task"] == rb["per_task"]


def test_pretrained_evaluates_the_checkpoint_and_rejects_other_models(shards, finished_run,
                                                                      capsys):
    trained_config = open(os.path.join(finished_run, "config.json")).read()
    assert run_metasegnet.main(_argv(shards, finished_run, "--pretrained")) == 0
    out = capsys.readouterr().out
    # The training run's config stays; the evaluation's own config is written beside it.
    assert open(os.path.join(finished_run, "config.json")).read() == trained_config
    evaluated = json.load(open(os.path.join(finished_run, setup.EVAL_CONFIG_NAME)))
    assert evaluated["run"]["pretrained"] is True
    expected = json.load(open(os.path.join(finished_run, "meta-test_results.json")))["mean_iou"]
    line = [l for l in out.splitlines() if l.startswith("Mean IoU over all meta-test tasks: ")]
    assert float(line[0].split(": ")[1]) == pytest.approx(expected, abs=1e-9)
    assert run_metasegnet.main(_argv(shards, finished_run, "--pretrained", "--rsd", "4")) == 2
    err = capsys.readouterr().err
    assert "model.rsd: checkpoint [2, 4], this run [4]" in err


def test_a_refused_pretrained_evaluation_writes_nothing(shards, finished_run, tmp_path, capsys):
    def contents(folder):
        return {name: open(os.path.join(folder, name), "rb").read()
                for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))}
    before = contents(finished_run)
    assert setup.EVAL_CONFIG_NAME in before  # an earlier evaluation's config
    assert run_metasegnet.main(_argv(shards, finished_run, "--pretrained", "--rsd", "4")) == 2
    assert "model.rsd: checkpoint [2, 4], this run [4]" in capsys.readouterr().err
    assert contents(finished_run) == before
    notes = tmp_path / "notes.txt"  # --checkpoint given a file that is no checkpoint
    notes.write_text("mine")
    assert run_metasegnet.main(_argv(shards, str(notes), "--pretrained")) == 2
    assert "holds none" in capsys.readouterr().err and os.listdir(tmp_path) == ["notes.txt"]


def test_resume_compares_the_test_list_as_a_file_not_as_a_path(tmp_path, monkeypatch):
    from args import parse_args
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.txt").write_text("bus\ncat\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text("{}")
    (tmp_path / "run" / "config.json").write_text(
        parse_args(["--test_tasks_file", "test.txt"]).to_json())
    # the same list by its absolute path, or a copy of it: the same run
    restore.check_compatible(str(tmp_path / "run"), parse_args(
        ["--test_tasks_file", str(tmp_path / "test.txt")]), resume=True)
    (tmp_path / "copy.txt").write_text("bus\ncat\n")
    restore.check_compatible(str(tmp_path / "run"), parse_args(
        ["--test_tasks_file", "copy.txt"]), resume=True)
    (tmp_path / "other.txt").write_text("bus\n")
    with pytest.raises(setup.RunError, match="data.test_tasks_file: checkpoint 'test.txt'"):
        restore.check_compatible(str(tmp_path / "run"), parse_args(
            ["--test_tasks_file", "other.txt"]), resume=True)


@pytest.mark.parametrize("flags,refused", [([], False), (["--augment"], True),
                                           (["--augment", "--augmentation", "metaseg"], False)])
def test_runs_from_before_the_augmentation_flag_resume_as_metaseg(tmp_path, flags, refused):
    from args import parse_args
    saved = _older_layout(json.loads(parse_args(flags).to_json()))
    del saved["inner"]["augmentation"]  # a config.json written before the flag existed
    (tmp_path / "state.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = parse_args(flags)
    if refused:
        with pytest.raises(setup.RunError, match="inner.augmentation: checkpoint 'metaseg'"):
            restore.check_compatible(str(tmp_path), cfg, resume=True)
    else:
        restore.check_compatible(str(tmp_path), cfg, resume=True)


def _older_layout(config):
    """A config.json as versions before the one adaptation type wrote it (inner, eval.eval_*,
    model.final_layer_dropout_rate)."""
    adapt, inner = config.pop("adapt"), config["meta"].pop("inner")
    config["inner"] = {"sgd": inner["sgd"], "learning_rate": inner["learning_rate"],
                       "inner_batch_size": inner["batch_size"], "inner_iters": inner["steps"],
                       "augment": inner["aug_rate"] > 0, "aug_rate": inner["aug_rate"] or 0.5,
                       "augmentation": inner["augmentation"],
                       "learning_rate_scheduler": inner["scheduler"],
                       "step_decay_rate": inner["step_decay_rate"],
                       "decay_after_n_steps": inner["decay_after_n_steps"],
                       "replacement": inner["replacement"], "weight_decay": inner["weight_decay"]}
    config["eval"].update(eval_iters=adapt["steps"], eval_batch_size=adapt["batch_size"])
    config["model"]["final_layer_dropout_rate"] = adapt["dropout_rate"]
    return config


def test_pretrained_keeps_the_training_runs_results(finished_run):
    """Each evaluation has its own numbered file; the plain name is the newest."""
    def load(name):
        with open(os.path.join(finished_run, name)) as f:
            return json.load(f)
    training, evaluation = load("meta-test_results-1.json"), load("meta-test_results-2.json")
    assert training["config"]["run"]["pretrained"] is False
    assert evaluation["config"]["run"]["pretrained"] is True
    assert load("meta-test_results.json") == evaluation


def test_refused_resume_leaves_config_json_untouched(shards, finished_run, capsys):
    before = open(os.path.join(finished_run, "config.json")).read()
    assert run_metasegnet.main(_argv(shards, finished_run, "--learning-rate", "0.02")) == 2
    assert "meta.inner.learning_rate: checkpoint 0.01, this run 0.02" in capsys.readouterr().err
    assert open(os.path.join(finished_run, "config.json")).read() == before


def _own_task(root):
    from PIL import Image
    rng = np.random.default_rng(0)
    for part, stems in (("support", ("1", "2")), ("query", ("q",))):
        (root / part).mkdir(parents=True)
        for stem in stems:
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / part / f"{stem}.jpg")
            if part == "support":
                Image.fromarray(np.eye(40, dtype=np.uint8) * 255).save(root / part / f"{stem}.png")
    return root


FINE_TUNE_FLAGS = ["--image_size", "32", "--rsd", "2", "--eval-iters", "1", "--eval-batch", "2"]


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A meta-training run directory with a usable init: ckpt-3 and ckpt-4, LAST -> ckpt-4."""
    from args import parse_args
    from models.build import build_model
    run = str(tmp_path_factory.mktemp("training_run") / "run")
    cfg = parse_args(FINE_TUNE_FLAGS + ["--checkpoint", run])
    variables = list(build_model(cfg.model).variables)
    for step in (3, 4):
        checkpoint.save_checkpoint(run, step, {"model": variables}, rng_state=None,
                                   config_json=cfg.to_json(), keep=2)
    return run


def _listing(folder):
    return {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("case", ["training_run", "link_to_run", "file", "user_predictions"])
def test_fine_tune_task_refuses_outputs_it_does_not_own(training_run, tmp_path, capsys, case):
    """Nothing of a training run or of the user's is replaced; refused before any work."""
    run = str(tmp_path / "run")
    shutil.copytree(training_run, run)
    before = _listing(run)
    task = _own_task(tmp_path / "task")
    flags = FINE_TUNE_FLAGS + ["--checkpoint", run, "--fine-tune-task", str(task)]
    if case == "training_run":
        flags += ["--fine-tuned-checkpoint", run]
        expected = "holds no fine-tuned weights"
    elif case == "link_to_run":
        os.symlink(run, task / "fine_tuned_checkpoint")
        expected = "outside the task folder"
    elif case == "file":
        (tmp_path / "weights.bin").write_bytes(b"mine")
        flags += ["--fine-tuned-checkpoint", str(tmp_path / "weights.bin")]
        expected = "is a file"
    else:
        (task / "predictions").write_text("my notes")
        expected = "is a file; pass a folder"
    with pytest.raises(SystemExit) if case == "file" else _nothing():
        assert run_metasegnet.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert _listing(run) == before
    assert not (task / "predictions").is_dir()
    if case == "user_predictions":
        assert (task / "predictions").read_text() == "my notes"


def _nothing():
    import contextlib
    return contextlib.nullcontext()
