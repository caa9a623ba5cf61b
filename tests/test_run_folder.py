"""One process per run folder, end to end: two runs started together on one --checkpoint (one is
refused, the other's run is intact), and a run killed with kill -9 in the middle of a checkpoint
(its rerun takes the lock over, removes the dead write and ends as an uninterrupted run)."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from data.demo import make_demo_dataset
from fss_1000_image_to_tfrecord import convert
import run_metasegnet
from storage import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 2-stack U-Net at 32 px, a checkpoint after each of 3 meta-iterations.
FLAGS = ["--image_size", "32", "--model_name", "unet", "--n_unet_encoding_stacks", "2",
         "--start_num_feature_maps_power", "2", "--num_test_tasks", "2", "--foml",
         "--train-shots", "4", "--inner-iters", "1", "--inner-batch", "4", "--meta-batch", "2",
         "--eval-interval", "1", "--monitor_tasks", "1", "--eval-iters", "2", "--eval-batch", "4",
         "--shots", "2", "--eval-samples", "1", "--sgd", "--learning-rate", "0.1", "--seed", "1",
         "--meta-iters", "3"]
# Killed (SIGKILL, as kill -9) while it writes the second checkpoint's state.json.
KILLED_MID_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from storage import atomic
write_text = atomic.write_text
def killed_mid_checkpoint(path, text):
    if ".ckpt-00000002.tmp-" in path and path.endswith("state.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return write_text(path, text)
atomic.write_text = killed_mid_checkpoint
import run_metasegnet
sys.exit(run_metasegnet.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_folder_data")
    make_demo_dataset(str(root / "fss"), num_classes=5, images_per_class=8, image_size=32, seed=0)
    convert(str(root / "fss"), str(root / "shards"), image_size=32, log=None)
    return str(root / "shards")


def _argv(shards, run_dir):
    return ["--data-dir", shards, "--checkpoint", str(run_dir), *FLAGS]


def _popen(*command):
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _weights(run_dir):
    with np.load(os.path.join(checkpoint.latest_checkpoint(str(run_dir)), "variables.npz")) as f:
        return {k: f[k] for k in f.files}


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("run_metasegnet.py:")]


@pytest.fixture(scope="module")
def two_at_once(shards, tmp_path_factory):
    """Two identical runs started together on one folder."""
    root = tmp_path_factory.mktemp("two_at_once")
    procs = [_popen("run_metasegnet.py", *_argv(shards, root / "run")) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    return root, [p.returncode for p in procs], outputs


def test_two_processes_on_one_folder_one_refused_the_other_intact(two_at_once):
    root, codes, outputs = two_at_once
    assert sorted(codes) == [0, 2], outputs
    refused = outputs[codes.index(2)][1]
    assert len(_errors(refused)) == 1 and "is in use by pid " in _errors(refused)[0]
    with open(root / "run" / "training_log.csv", newline="") as f:
        assert [int(r["meta_iter"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    assert [s for s, _ in checkpoint.list_checkpoints(str(root / "run"))] == [2, 3]
    assert checkpoint.read_state(str(root / "run"))["step"] == 3
    assert not [e for e in os.listdir(root / "run") if ".tmp-" in e]
    assert not os.path.exists(root / "run" / "LOCK")  # released at exit


def test_a_run_killed_mid_checkpoint_resumes_lock_and_all(shards, two_at_once, tmp_path, capsys):
    root, _, _ = two_at_once
    run = tmp_path / "run"
    killed = _popen("-c", KILLED_MID_CHECKPOINT.format(root=ROOT), *_argv(shards, run))
    killed.communicate(timeout=600)
    assert killed.returncode == -9
    assert (run / "LOCK").is_file()  # the dead holder's lock ...
    assert [e for e in os.listdir(run) if ".tmp-" in e]  # ... and its half-written checkpoint
    assert checkpoint.read_state(str(run))["step"] == 1
    assert run_metasegnet.main(_argv(shards, run)) == 0
    out = capsys.readouterr().out
    assert f"from pid {killed.pid} " in out and "no longer running" in out
    assert "Resuming meta-training from" in out
    assert not [e for e in os.listdir(run) if ".tmp-" in e] and not (run / "LOCK").exists()
    # ... to the weights of the run that went through uninterrupted
    resumed, whole = _weights(run), _weights(root / "run")
    assert resumed.keys() == whole.keys()
    assert all(np.array_equal(resumed[k], whole[k]) for k in whole)


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(
        shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAVE_PREDICTIONS", "1")  # /sys refuses new files even to root
    argv = _argv(shards, tmp_path / "run") + ["--predictions_dir", "/sys/metaseg-predictions"]
    assert run_metasegnet.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("run_metasegnet.py: error: --predictions_dir '/sys/metaseg-predictions' "
                   "cannot be written (Permission denied in '/sys'); make it writable or choose "
                   "another --predictions_dir.")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_the_flag_and_a_rerun_works(
        tmp_path, monkeypatch):
    from args import parse_args
    from mode_flags import os_error_line
    run = tmp_path / "run"
    cfg = parse_args(["--checkpoint", str(run)])
    groups = {"model": [np.zeros(1000, np.float32)]}
    checkpoint.save_checkpoint(str(run), 1, groups, rng_state=None, config_json="{}")

    def to_a_full_disk(f, **arrays):
        with open("/dev/full", "wb") as full:  # a real ENOSPC, which names no file
            full.write(b"x" * 100_000)
    monkeypatch.setattr(checkpoint.np, "savez", to_a_full_disk)
    with pytest.raises(OSError) as info:
        checkpoint.save_checkpoint(str(run), 2, groups, rng_state=None, config_json="{}")
    line = os_error_line(cfg, info.value)
    assert line.startswith(str(run / ".ckpt-00000002.tmp-")) and "\n" not in line
    assert line.endswith(f"variables.npz (--checkpoint {run}): No space left on device "
                         f"[Errno 28]; free space on that disk or choose another --checkpoint, "
                         f"then rerun (a training run resumes from its last checkpoint).")
    monkeypatch.undo()
    assert not [e for e in os.listdir(run) if ".tmp-" in e]
    assert checkpoint.read_state(str(run))["step"] == 1  # LAST still names the last good one
    checkpoint.save_checkpoint(str(run), 2, groups, rng_state=None, config_json="{}")
    assert checkpoint.read_state(str(run))["step"] == 2
