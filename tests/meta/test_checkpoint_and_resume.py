"""Checkpoints: atomic writes, keep-last-N, clear mismatch errors, exact resume of meta-training."""
import dataclasses
import os
from functools import partial

import numpy as np
import pytest

from adapt.config import EvalConfig
from adapt.evaluate import monitor
from data.splits import Splits
from meta.algorithms import MetaLearner
from meta.config import MetaConfig
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.train import is_time, meta_train
from storage import checkpoint
from report.logs import read_log
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks

SCHEDULE = Adaptation(learning_rate=0.02, steps=2, batch_size=4, aug_rate=0.5, dropout_rate=0.2)


def _variables(seed=0):
    model = tiny_model(seed=seed)
    return model, list(model.variables)


def test_is_time():
    assert [s for s in range(0, 11) if is_time(s, 4, 10)] == [0, 4, 8, 10]


def test_save_load_round_trip_keeps_last_n(tmp_path):
    model, variables = _variables()
    for step in (1, 2, 3):
        for v in model.trainable_variables:
            v.assign(v + 1.0)
        checkpoint.save_checkpoint(str(tmp_path), step, {"model": variables},
                                   rng_state={"s": step}, config_json="{}", keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [2, 3]
    saved = [np.array(v.numpy()) for v in variables]
    for v in model.trainable_variables:
        v.assign(v * 0.0)
    state = checkpoint.load_checkpoint(str(tmp_path), {"model": variables})
    assert state["step"] == 3 and state["rng_state"] == {"s": 3}
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(saved, variables))


def test_crash_mid_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, variables = _variables()
    checkpoint.save_checkpoint(str(tmp_path), 1, {"model": variables}, rng_state=None,
                               config_json="{}")
    first = [np.array(v.numpy()) for v in variables]
    for v in model.trainable_variables:
        v.assign(v + 5.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(checkpoint.atomic, "write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(str(tmp_path), 2, {"model": variables}, rng_state=None,
                                   config_json="{}")
    monkeypatch.undo()
    assert checkpoint.latest_checkpoint(str(tmp_path)).endswith("ckpt-00000001")
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [1]
    checkpoint.load_checkpoint(str(tmp_path), {"model": variables})
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(first, variables))


def test_incompatible_checkpoint_names_the_mismatch(tmp_path):
    _, variables = _variables()
    checkpoint.save_checkpoint(str(tmp_path), 1, {"model": variables}, rng_state=None,
                               config_json="{}")
    other = tiny_model(size=16).variables  # same layers, other image size: same shapes
    wider = list(variables)
    wider[0] = np.zeros((3, 3, 3, 9), np.float32)  # a conv with 9 filters instead of 8

    class Fake:
        def __init__(self, array, path):
            self.shape, self.dtype, self.path = array.shape, "float32", path
    fake = [Fake(wider[0], "conv/kernel")] + variables[1:]
    with pytest.raises(ValueError, match=r"model\[0\]: model conv/kernel \(3, 3, 3, 9\)"):
        checkpoint.load_checkpoint(str(tmp_path), {"model": fake})
    with pytest.raises(ValueError, match="group 'outer_optimizer' is not in the checkpoint"):
        checkpoint.load_checkpoint(str(tmp_path), {"model": list(other),
                                                   "outer_optimizer": []})
    with pytest.raises(FileNotFoundError, match="No metaseg checkpoint"):
        checkpoint.load_checkpoint(str(tmp_path / "nothing"), {"model": variables})
    diffs = checkpoint.config_differences({"model": {"rsd": [2, 4], "image_size": 64}},
                                          {"model": {"rsd": [4], "image_size": 64}}, ["model"])
    assert diffs == ["model.rsd: checkpoint [2, 4], this run [4]"]


def _run(run_dir, *, stop_after=None, resume=False):
    """Meta-train the tiny model 4 iterations (checkpoint every 2); optionally resume first."""
    tasks = toy_tasks(5, n=8)
    splits = Splits(train=("class0", "class1", "class2"), val=("class3",), test=("class4",))
    meta = MetaConfig(algorithm="fomaml", train_shots=6, foml_tail=2, meta_batch_size=2,
                      meta_iters=4, eval_interval=2, monitor_tasks=1, meta_step_size=0.5,
                      meta_step_size_final=0.1, seed=3, inner=SCHEDULE)
    model = tiny_model(seed=3)
    loop = InnerLoop(model, cross_entropy, SCHEDULE)
    learner = MetaLearner(loop, meta)
    groups = {"model": list(model.variables), "inner_optimizer": list(loop.optimizer.variables),
              "outer_optimizer": list(learner.outer_optimizer.variables)}
    rng = np.random.default_rng([3, 0])
    start = 0
    if resume:
        state = checkpoint.load_checkpoint(run_dir, groups)
        rng.bit_generator.state = state["rng_state"]
        start = state["step"]
    watch = partial(monitor, learner, tasks, splits, meta=meta,
                    evaluation=EvalConfig(shots=2), adaptation=SCHEDULE)
    meta_train(learner, tasks, splits, meta=meta, monitor=watch, rng=rng, run_dir=run_dir,
               config_json="{}",
               checkpoint_groups=groups, start_step=start, stop_after=stop_after)
    return [np.array(v.numpy()) for v in model.variables]


def test_resumed_run_ends_with_exactly_the_uninterrupted_weights(tmp_path):
    straight = _run(str(tmp_path / "a"))
    _run(str(tmp_path / "b"), stop_after=3)  # "killed" after 3 iterations; last checkpoint: 2
    assert checkpoint.read_state(str(tmp_path / "b"))["step"] == 2
    resumed = _run(str(tmp_path / "b"), resume=True)
    assert all(np.array_equal(a, b) for a, b in zip(straight, resumed))
    log_a = read_log(str(tmp_path / "a" / "training_log.csv"))
    log_b = read_log(str(tmp_path / "b" / "training_log.csv"))
    assert [r["meta_iter"] for r in log_b] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in log_a[1:]] == [r["loss"] for r in log_b[1:]]
    assert not np.isnan(log_b[2]["val_miou"]) and np.isnan(log_b[1]["val_miou"])


def test_pruning_deletes_only_this_runs_checkpoints_newest_kept(tmp_path, monkeypatch):
    """Another run's checkpoints (higher or lower steps) survive; this run keeps its newest."""
    run = str(tmp_path)
    _, variables = _variables()

    def save(step, keep=1):
        return checkpoint.save_checkpoint(run, step, {"model": variables}, rng_state=None,
                                          config_json="{}", keep=keep)
    monkeypatch.setattr(checkpoint, "_PROCESS_RUN_ID", "the-training-run", raising=False)
    for step in (2, 4):
        save(step)
    monkeypatch.setattr(checkpoint, "_PROCESS_RUN_ID", "a-fine-tuning", raising=False)
    assert save(3).endswith("ckpt-00000003")  # a lower step than the other run's newest
    # The training run had pruned its own 2; its newest, 4, survives a lower-step save.
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [3, 4]
    assert checkpoint.latest_checkpoint(run).endswith("ckpt-00000003")
    save(1)  # newest by writing order, not by step: 3 goes, 1 stays
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [1, 4]
    # A resumed run (new process) adopts the loaded checkpoint's run and prunes it on.
    monkeypatch.setattr(checkpoint, "_PROCESS_RUN_ID", "next-process", raising=False)
    monkeypatch.setattr(checkpoint, "_ADOPTED", {}, raising=False)
    checkpoint.load_checkpoint(run, {"model": variables})
    save(5)
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [4, 5]


def test_diverging_run_stops_before_saving_and_names_the_last_checkpoint(tmp_path):
    def train(run_dir, step_sizes):
        tasks = toy_tasks(4, n=8)
        splits = Splits(train=("class0", "class1", "class2"), val=(), test=("class3",))
        inner = Adaptation(learning_rate=0.02, steps=1, batch_size=4, sgd=True, dropout_rate=0.2)
        meta = MetaConfig(train_shots=4, meta_batch_size=1, meta_iters=4, eval_interval=1,
                          monitor_tasks=1, seed=0, inner=inner)
        model = tiny_model(seed=0)
        loop = InnerLoop(model, cross_entropy, inner, augment=True)
        learner = MetaLearner(loop, meta)
        watch = partial(monitor, learner, tasks, splits, meta=meta, evaluation=EvalConfig(shots=2),
                        adaptation=dataclasses.replace(SCHEDULE, sgd=True))
        meta_train(learner, tasks, splits, meta=meta, monitor=watch,
                   rng=np.random.default_rng(0), run_dir=run_dir,
                   config_json="{}", checkpoint_groups={"model": list(model.variables)},
                   meta_step_size_at=lambda step: step_sizes[step])
    # Runaway weights (finite loss under batch norm) in the first meta-iteration.
    with pytest.raises(FloatingPointError) as first:
        train(str(tmp_path / "a"), [1e30] * 4)
    message = str(first.value)
    assert "meta-iterations 1..1" in message and "no checkpoint was written yet" in message
    assert checkpoint.list_checkpoints(str(tmp_path / "a")) == []
    # Non-finite weights after two good meta-iterations, each checkpointed.
    with pytest.raises(FloatingPointError) as third:
        train(str(tmp_path / "b"), [0.1, 0.1, float("inf"), 0.1])
    message = str(third.value)
    assert "meta-iterations 3..3" in message and "ckpt-00000002" in message
    assert "\n" not in message
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path / "b"))] == [1, 2]


def test_corrupt_or_non_finite_checkpoint_is_one_clear_error(tmp_path):
    model, variables = _variables()
    path = checkpoint.save_checkpoint(str(tmp_path), 1, {"model": variables}, rng_state=None,
                                      config_json="{}")
    npz = os.path.join(path, "variables.npz")
    data = open(npz, "rb").read()
    with open(npz, "wb") as f:
        f.write(data[:len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(ValueError, match="variables.npz is truncated or corrupt"):
        checkpoint.load_checkpoint(str(tmp_path), {"model": variables})
    arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    arrays["model/00000"] = arrays["model/00000"] * np.nan
    np.savez(npz, **arrays)  # an older version saved divergence: it is not evaluated
    with pytest.raises(ValueError, match="NaN or inf"):
        checkpoint.load_checkpoint(str(tmp_path), {"model": variables})
