"""A run folder in any state a run or a user leaves it in is read as an init, or refused naming
what to pass: a run still being trained is used at its newest complete checkpoint and says so
(the page too); a lost LAST, or a LAST naming a checkpoint that is not complete, falls back to
the newest complete one (a resume is told which one to point LAST at); an unzipped weights.zip
names its weights/ folder; a LOCK that is a dangling link is named as such."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from errors import UserError
from segmenter import from_checkpoint, resolve_init
from storage import checkpoint, lock
from tests.segmenter.test_segmenter_api import FIXTURE_RUN, examples

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = ("import sys, time; sys.path.insert(0, sys.argv[2]); from storage import lock; "
          "lock.hold(sys.argv[1], '--checkpoint'); print('held', flush=True); time.sleep(120)")


@pytest.fixture
def run_copy(tmp_path):
    """A copy of the fixture run: ckpt-00000001 and ckpt-00000002, LAST naming the second."""
    target = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, target)
    assert [os.path.basename(p) for _, p in checkpoint.list_checkpoints(str(target))] == \
        ["ckpt-00000001", "ckpt-00000002"]
    return target


@pytest.fixture
def trainer(run_copy):
    """A live process holding the run's lock, as a run in training does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_copy), ROOT],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_run_still_training_is_used_at_its_newest_complete_checkpoint(run_copy, trainer):
    # Mid-save: the next checkpoint's temporary folder is there, LAST not yet moved.
    (run_copy / f".ckpt-00000003.tmp-{trainer.pid}-x").mkdir()
    init, _ = resolve_init(str(run_copy))
    assert init.weights.endswith("ckpt-00000002") and init.state["step"] == 2
    assert f"still being trained by pid {trainer.pid}" in init.note
    assert "newest complete checkpoint, ckpt-00000002" in init.trained_on()
    from serve.app import header
    seg = from_checkpoint(str(run_copy))
    assert f"still being trained by pid {trainer.pid}" in header(seg)
    # Before its first checkpoint: refused, saying it is training.
    for entry in ("LAST", "ckpt-00000001", "ckpt-00000002"):
        shutil.rmtree(run_copy / entry) if (run_copy / entry).is_dir() else \
            os.remove(run_copy / entry)
    with pytest.raises(UserError, match=rf"is being trained by pid {trainer.pid} .* holds no "
                                        r"complete checkpoint yet"):
        resolve_init(str(run_copy))


def test_a_lost_or_wrong_last_falls_back_to_the_newest_complete_checkpoint(run_copy):
    os.remove(run_copy / "LAST")
    init, _ = resolve_init(str(run_copy))
    assert init.weights.endswith("ckpt-00000002")
    assert init.note == "its LAST is missing: this is its newest complete checkpoint, ckpt-00000002"
    (run_copy / "LAST").write_text("ckpt-00000003\n")  # a save that never finished
    init, _ = resolve_init(str(run_copy))
    assert init.weights.endswith("ckpt-00000002")
    assert "its LAST names 'ckpt-00000003', which is not complete" in init.note
    # Resuming training is told which checkpoint to point LAST at, not to delete it.
    with pytest.raises(FileNotFoundError, match=r"the newest complete one is ckpt-00000002: "
                                                r"write its name into .*LAST to use it"):
        checkpoint.latest_checkpoint(str(run_copy))
    for step in (1, 2):
        os.remove(run_copy / f"ckpt-0000000{step}" / "state.json")
    with pytest.raises(UserError, match="holds no complete checkpoint"):
        resolve_init(str(run_copy))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint is left: delete"):
        checkpoint.latest_checkpoint(str(run_copy))


def test_an_unzipped_weights_zip_names_its_weights_folder(run_copy, tmp_path):
    seg = from_checkpoint(str(run_copy), steps=1)
    seg.fit(*examples([(40, 40)]))
    saved = tmp_path / "session"
    seg.save(str(saved / "weights"))
    with zipfile.ZipFile(tmp_path / "weights.zip", "w") as archive:
        for folder, _, files in os.walk(saved):
            for name in files:
                path = os.path.join(folder, name)
                archive.write(path, os.path.relpath(path, saved))
    with zipfile.ZipFile(tmp_path / "weights.zip") as archive:
        archive.extractall(tmp_path / "download")
    weights = str(tmp_path / "download" / "weights")
    with pytest.raises(UserError, match=rf"Its subfolder '{weights}' holds one \(an unzipped "
                                        r"weights.zip holds weights/\): pass that"):
        from_checkpoint(str(tmp_path / "download"))
    assert from_checkpoint(weights).init.kind == "fine_tuned"


def test_a_dangling_lock_link_is_named(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(tmp_path / "gone", folder / "LOCK")
    with pytest.raises(UserError, match=r"its lock .*LOCK is a symbolic link \(to .*gone'\), "
                                        r"which this tool never writes; .* delete the link"):
        lock.hold(str(folder), "--checkpoint")
    assert os.path.islink(folder / "LOCK")  # left for the user to judge
