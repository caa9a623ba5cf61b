"""The paper's downloads as they are: run.sh's paper branch end to end, and damaged shards."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from modes import setup
import run_metasegnet
from tests.fixtures.paper_shards_writer import paper_record, write_paper_shard
from tests.fixtures.tf1_synthetic import write_synthetic_checkpoint

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
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # run.sh's default
    proc = subprocess.run(["./run.sh", "--eval-iters", "2", "--eval-samples", "1"], cwd=paper_repo,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # None of TensorFlow's C++ lines (start-up notices, the oneDNN DT_INT32 line of the first
    # inner-loop trace) reaches the screen.
    assert not re.search(r"^(WARNING: All log messages before absl|[IWE]\d{4} )", proc.stderr,
                         re.M), proc.stderr[-3000:]
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


def test_meta_training_continues_from_a_tf1_checkpoint(tmp_path, capsys):
    """--continue_training_from_checkpoint takes the paper's TF1 files: the init meta-training
    starts from holds their weights and BN statistics; optimizers and iteration count are fresh."""
    from args import parse_args
    from meta.algorithms import MetaLearner
    from storage.tf1_checkpoint import open_tf1_checkpoint
    import modes.experiments
    from modes import restore
    from models.build import build_model
    write_synthetic_checkpoint(str(tmp_path / "tf1"), rsd=(2, 4), optimizer="adam", seed=5)
    cfg = parse_args(["--data-dir", "unused", "--image_size", "32", "--rsd", "2", "4",
                      "--checkpoint", str(tmp_path / "run"), "--meta-iters", "3",
                      "--continue_training_from_checkpoint", str(tmp_path / "tf1")])
    loop = modes.experiments.make_inner_loop(cfg, build_model(cfg.model))
    learner = MetaLearner(loop, cfg.meta)
    rng = np.random.default_rng(0)
    rng_state = rng.bit_generator.state
    assert restore.restore(cfg, loop.model, learner, rng) == 0  # meta-iteration 0
    assert "Continuing meta-training from TF1 checkpoint" in capsys.readouterr().out
    with open_tf1_checkpoint(str(tmp_path / "tf1")) as (_, reader):
        np.testing.assert_array_equal(loop.model.get_layer("final_layer_weights").kernel.numpy(),
                                      reader.get_tensor("decode/final_layer_weights/kernel"))
        np.testing.assert_array_equal(
            loop.model.get_layer("rsd2_b0_bn").moving_variance.numpy(),
            reader.get_tensor("decode/decode_skip_connections_1/batch_normalization/"
                              "moving_variance"))
    for optimizer in (loop.optimizer, learner.outer_optimizer):  # the TF1 Adam slots stay out
        assert all(not np.any(v.numpy()) for v in optimizer.variables if "iteration" not in v.path
                   and "learning_rate" not in v.path)
        assert int(optimizer.iterations.numpy()) == 0
    assert rng.bit_generator.state == rng_state


def test_fp_k_folder_alone_suits_the_k_shot_curves_only():
    """The paper's FP-k folder holds just the 5 FP-k classes: no training classes. k-shot curves of
    a given init (the reference's use of it) accept that; meta-training does not."""
    from args import parse_args
    names = ["airliner", "bus", "motorbike", "potted_plant", "television"]
    base = ["--data-dir", "fp_k", "--fp_k_test_set", "--checkpoint", "ckpt"]
    kshot = parse_args(base + ["--pretrained", "--run_k_shot_learning_curves_experiment"])
    splits = setup.make_splits(kshot, names)
    assert splits.test == tuple(names) and splits.train == ()
    with pytest.raises(setup.RunError, match="No meta-training classes"):
        setup.make_splits(parse_args(base), names)


def test_fss_1000_test_list_beside_the_shards_else_the_shipped_one(tmp_path, capsys):
    """--fss_1000 without --test_tasks_file: a fss_test_set.txt next to the shards (the paper's
    README) wins; without one, the list shipped in splits/ gives FSS-1000's 240 test classes."""
    from args import parse_args
    from data.splits import SHIPPED_LISTS, read_class_list
    test = read_class_list(os.path.join(SHIPPED_LISTS, "fss_test_set.txt"))
    train = read_class_list(os.path.join(SHIPPED_LISTS, "fss_train_set.txt"))
    names = sorted(test + [n.replace("thors_hammer", "thor's_hammer") for n in train])
    (tmp_path / "fewshot_shards").mkdir()
    (tmp_path / "fewshot_shards" / "bus.tfrecord.gzip").write_bytes(b"")  # the paper's format
    cfg = parse_args(["--data-dir", str(tmp_path / "fewshot_shards"), "--fss_1000",
                      "--checkpoint", str(tmp_path / "run")])
    assert setup.make_splits(cfg, names).test == tuple(sorted(test))
    assert os.path.join(SHIPPED_LISTS, "fss_test_set.txt") in capsys.readouterr().out
    (tmp_path / "fss_test_set.txt").write_text("bus\r\nzebra\r\n")
    assert setup.make_splits(cfg, names).test == ("bus", "zebra")
    fp_k = read_class_list(os.path.join(SHIPPED_LISTS, "fp-k_test_set.txt"))
    assert tuple(fp_k) == setup.FP_K_TEST_CLASSES
