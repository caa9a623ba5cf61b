"""One process per run folder (storage/lock.py), and leftovers removed only when their writer is
dead (storage/atomic.py): checked against real processes."""
import json
import os
import stat
import subprocess
import sys

from absl import logging as absl_logging
import numpy as np
import pytest

from errors import UserError
from storage import atomic, checkpoint, lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = ("import sys, time; sys.path.insert(0, sys.argv[2]); from storage import lock; "
          "lock.hold(sys.argv[1], '--checkpoint'); print('held', flush=True); time.sleep(60)")


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


@pytest.fixture
def holder(tmp_path):
    """Another live process holding tmp_path/run."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), ROOT],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_process_is_refused_before_writing_and_a_dead_holders_lock_is_taken_over(
        tmp_path, holder, caplog):
    run = str(tmp_path / "run")
    before = _listing(run)
    with pytest.raises(UserError) as refused:
        lock.hold(run, "--checkpoint")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and f"pid {holder.pid} on " in message
    assert "--checkpoint" in message and run in message
    assert _listing(run) == before  # nothing written
    holder.kill()  # kill -9: the lock stays behind
    holder.wait()
    logger = absl_logging.get_absl_logger()  # run_metasegnet.main stops its propagation
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger=logger.name):
            path = lock.hold(run, "--checkpoint")
    finally:
        logger.removeHandler(caplog.handler)
    try:
        assert f"from pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
        with open(path) as f:
            assert json.load(f)["pid"] == os.getpid()
    finally:
        lock.release_all()
    assert not os.path.exists(path)


def test_a_lock_of_another_host_names_the_file_to_delete(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / lock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(UserError, match=f"cannot be checked from .* delete {run}/LOCK"):
        lock.hold(str(run), "--checkpoint")


def test_save_removes_only_the_leftovers_of_dead_writers_and_follows_the_umask(tmp_path,
                                                                              holder):
    run = tmp_path / "run"
    live = run / f".ckpt-00000002.tmp-{holder.pid}-abcd"  # another process, still writing
    dead = run / f".ckpt-00000002.tmp-{_dead_pid()}-efgh"  # a writer killed mid-write
    stray = run / f"LAST.tmp-{_dead_pid()}"
    live.mkdir()
    dead.mkdir()
    stray.write_text("ckpt-0000")
    old = os.umask(0o022)
    try:
        path = checkpoint.save_checkpoint(str(run), 1, {"model": [np.zeros(3, np.float32)]},
                                          rng_state=None, config_json="{}")
    finally:
        os.umask(old)
    assert live.is_dir() and not dead.exists() and not stray.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755  # as a mkdir, not mkdtemp's 0700
    assert atomic.remove_leftovers(str(run)) == []
