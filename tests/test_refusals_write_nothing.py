"""A refusal writes nothing, in every mode: for each row of mode_flags.MODES, one command line
that the mode refuses after its flags pass (a taken port, a contradicting init, a folder or file
of the user's where an output goes, a missing input, a resume of another config) is run in
process over a work folder that already holds runs, outputs and the user's own files; the
whole work folder is compared byte for byte before and after, and the refusal is one message
(exit status 2). A new mode without a case here fails the test."""
import os
import shutil
import socket
import stat

import pytest

from args import parse_args
from data.demo import make_demo_dataset
from fss_1000_image_to_tfrecord import convert
from mode_flags import MODES, mode_of
from run_metasegnet import main
from tests.segmenter.test_segment_cli import _folder
from tests.segmenter.test_segmenter_api import FIXTURE_RUN

# The flags the fixture run was trained with (tests/fixtures/README.md).
RUN_FLAGS = ["--image_size", "32", "--model_name", "unet", "--n_unet_encoding_stacks", "2",
             "--start_num_feature_maps_power", "2", "--num_test_tasks", "2", "--foml",
             "--train-shots", "4", "--inner-iters", "1", "--inner-batch", "4", "--meta-batch",
             "1", "--eval-interval", "1", "--monitor_tasks", "1", "--eval-iters", "3",
             "--eval-batch", "4", "--shots", "2", "--eval-samples", "1",
             "--serially_eval_all_test_tasks", "--augment", "--sgd", "--seed", "1",
             "--meta-iters", "2"]
MTL = ["--model_name", "mtl_unet", "--image_size", "32", "--n_unet_encoding_stacks", "2",
       "--start_num_feature_maps_power", "2", "--num_test_tasks", "2", "--shot", "2",
       "--train_query", "2", "--val_query", "2", "--test_query", "2", "--teshot", "2"]


@pytest.fixture(scope="module")
def taken_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield str(held.getsockname()[1])


@pytest.fixture
def work(tmp_path):
    """A work folder: shards, a finished run, an MTL run folder, the page's output, a task
    folder whose predictions/ holds the user's notes, and an export folder of the user's."""
    make_demo_dataset(str(tmp_path / "fss"), num_classes=5, images_per_class=8, image_size=32,
                      seed=0)
    convert(str(tmp_path / "fss"), str(tmp_path / "shards"), image_size=32, log=None)
    shutil.rmtree(tmp_path / "fss")
    shutil.copytree(FIXTURE_RUN, tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("the user's notes on this run")
    (tmp_path / "mtl" / "pre_train").mkdir(parents=True)
    (tmp_path / "mtl" / "pre_train" / "notes.txt").write_text("kept")
    (tmp_path / "page" / "a-session" / "examples").mkdir(parents=True)
    (tmp_path / "page" / "a-session" / "examples" / "1.png").write_bytes(b"png")
    task = _folder(tmp_path / "task")
    (task / "predictions").mkdir()
    (task / "predictions" / "q1_mask.png").write_bytes(b"the user's own mask")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "notes.txt").write_text("the user's notes")
    (tmp_path / "exports" / "saved_model").mkdir(parents=True)
    (tmp_path / "exports" / "saved_model" / "notes.txt").write_text("the user's SavedModel")
    (tmp_path / "exports" / "model.keras").write_bytes(b"the user's Keras file")
    return tmp_path


def _cases(w, port):
    """mode -> (its refused command line, what the one line says)."""
    shards, run, task = str(w / "shards"), str(w / "run"), str(w / "task")
    data = ["--data-dir", shards]
    return {
        "serve": (["--serve", "--checkpoint", run, "--serve_dir", str(w / "page"), "--port",
                   port], f"--port {port} on 127.0.0.1 is taken"),
        "label_studio": (["--label_studio", "--checkpoint", run, "--port", port],
                         f"--port {port} on 127.0.0.1 is taken"),
        "export_only": (["--export", str(w / "exports"), "--checkpoint", run],
                        "exists and is not an export of this tool"),
        "fine_tune_only": (["--fine-tune-task", task, "--checkpoint", run],
                           "q1_mask.png is in the way"),
        "segment_only": (["--query_dir", str(w / "task" / "query"), "--checkpoint", run,
                          "--masks_dir", str(w / "masks")], "without --fine-tune-task"),
        "multiclass_pre_train": (["--phase", "pre_train", "--dataset", "COCO", "--dataset_dir",
                                  str(w / "no-coco"), "--checkpoint", str(w / "mtl"), *MTL],
                                 "no-coco"),
        "mtl_pre_train": (["--phase", "pre_train", *data, "--checkpoint", str(w / "mtl"),
                           "--pre_init_weights", str(w / "missing.weights.h5"), *MTL],
                          "--pre_init_weights"),
        "mtl_meta_train": (["--phase", "meta_train", *data, "--checkpoint", str(w / "mtl"),
                            "--init_weights", str(w / "mtl" / "pre_train"), *MTL],
                           "--init_weights"),
        "mtl_meta_eval": (["--phase", "meta_eval", *data, "--checkpoint", str(w / "mtl"),
                           "--eval_weights", str(w / "mtl" / "meta_train"), *MTL],
                          "--eval_weights"),
        "joint_train": (["--joint_train", *data, "--checkpoint", str(w / "joint"), "--export",
                         str(w / "exports"), *RUN_FLAGS],
                        "exists and is not an export of this tool"),
        "fine_tune_after_uho": (["--fine-tune-task", task,
                                 "--optimize_update_hyperparms_on_val_set", "--num_val_tasks",
                                 "1", "--pretrained", *data, "--checkpoint", run, *RUN_FLAGS],
                                "q1_mask.png is in the way"),
        "k_shot_curves": (["--run_k_shot_learning_curves_experiment", "--pretrained", *data,
                           "--checkpoint", run, *RUN_FLAGS[:1], "64", *RUN_FLAGS[2:]],
                          "image_size"),
        "meta_train": ([*data, "--checkpoint", run, *RUN_FLAGS, "--learning-rate", "0.5"],
                       "learning_rate"),
    }


def _snapshot(root):
    """Every file and folder under root: its type, mode and (for a file) its bytes."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            content = None
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            out[os.path.relpath(path, root)] = (stat.S_IFMT(info.st_mode),
                                                stat.S_IMODE(info.st_mode), content)
    return out


def test_every_mode_has_a_refused_case():
    assert set(_cases(__import__("pathlib").Path("/w"), "1")) == set(MODES)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_refusal_writes_nothing(mode, work, taken_port, capsys):
    argv, says = _cases(work, taken_port)[mode]
    assert mode_of(parse_args(argv)) == mode
    before = _snapshot(work)
    status = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2, err
    # One line, or for a refused resume one line and each differing setting on its own.
    assert err[0].startswith("run_metasegnet.py: error: ") and says in "\n".join(err), err
    assert len(err) == 1 or mode in ("k_shot_curves", "meta_train"), err
    after = _snapshot(work)
    assert sorted(set(after) ^ set(before)) == []  # nothing created, nothing deleted
    assert [p for p in before if before[p] != after[p]] == []  # nothing changed
