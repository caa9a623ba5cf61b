"""Joint-training baseline: it learns, checkpoints per epoch, resumes, and its checkpoint loads
like a meta-learned one for evaluation."""
import json
import os

import numpy as np
import pytest

from adapt.config import EvalConfig
from storage import checkpoint

from adapt import iou
from adapt.evaluate import evaluate
from baselines.joint_train import epoch_learning_rate, joint_train
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks

KWARGS = dict(training=Adaptation(batch_size=4, learning_rate=0.01, aug_rate=0.3, seed=0,
                                  dropout_rate=0.2), config_json=json.dumps({}))


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks(3, n=8)


def _loop(seed):
    return InnerLoop(tiny_model(seed=seed), cross_entropy, Adaptation(learning_rate=0.01),
                     augment=True)


def _pooled_iou(loop, tasks):
    images = np.concatenate([c.images for c in tasks.values()])
    masks = np.concatenate([c.masks for c in tasks.values()])
    return float(np.mean(iou.iou_per_image(iou.foreground(loop.predict(images).numpy()), masks)))


def test_epoch_learning_rate_decays_linearly():
    assert epoch_learning_rate(0, 5, 0.01) == pytest.approx(0.01)
    assert epoch_learning_rate(4, 5, 0.01) == pytest.approx(1e-6)
    assert epoch_learning_rate(2, 5, 0.01) == pytest.approx(0.5 * (0.01 + 1e-6))


def test_joint_training_learns_resumes_and_loads(tasks, tmp_path):
    loop = _loop(0)
    before = _pooled_iou(loop, tasks)
    run = str(tmp_path / "run")
    history = joint_train(loop, tasks, sorted(tasks), epochs=4, run_dir=run, **KWARGS)
    assert len(history) == 4 and history[-1] < history[0]
    assert _pooled_iou(loop, tasks) > before
    state = checkpoint.read_state(run)
    assert state["kind"] == "joint_train" and state["step"] == 4
    with open(os.path.join(run, "joint_train_log.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 4

    # Interrupted after 2 epochs, rerun into a model with another init: it resumes at epoch 3
    # and ends on the uninterrupted run's weights.
    interrupted = str(tmp_path / "interrupted")
    joint_train(_loop(0), tasks, sorted(tasks), epochs=4, run_dir=interrupted, stop_after=2,
                **KWARGS)
    resumed = _loop(3)
    assert len(joint_train(resumed, tasks, sorted(tasks), epochs=4, run_dir=interrupted,
                           **KWARGS)) == 2
    for a, b in zip(loop.model.variables, resumed.model.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)

    # --pretrained path: only the "model" group is loaded, then evaluated like any init.
    evaluator = _loop(5)
    checkpoint.load_checkpoint(run, {"model": list(evaluator.model.variables)})
    assert _pooled_iou(evaluator, tasks) == pytest.approx(_pooled_iou(loop, tasks), abs=1e-6)
    result = evaluate(evaluator, tasks, sorted(tasks), Adaptation(learning_rate=0.01, steps=2, batch_size=4),
                      EvalConfig(shots=3, num_query=3, transductive=True, eval_samples=1,
                                 serially_eval_all_test_tasks=True),
                      seed=0, stream=1, split="test")
    assert len(result.scores) == 3


def test_joint_training_refuses_a_meta_training_directory(tasks, tmp_path):
    loop = _loop(0)
    checkpoint.save_checkpoint(str(tmp_path), 5, {"model": list(loop.model.variables)},
                               rng_state=None, config_json="{}")
    with pytest.raises(ValueError, match="meta-training checkpoint"):
        joint_train(loop, tasks, sorted(tasks), epochs=1, run_dir=str(tmp_path), **KWARGS)
