"""MTL pre-training (baselines/pretrain.py): pooled meta-train classes only, coupled weight decay,
best val weights kept, exact resume."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from adapt.config import EvalConfig
from adapt.evaluate import evaluate
from baselines.config import MTLConfig
from baselines.pretrain import (BEST_INFO, BEST_WEIGHTS, PretrainStep, pre_train,
                           pre_train_learning_rate)
from data.splits import Splits
from data.tasks import pool_classes
from meta.adaptation import Adaptation, head_adaptation
from meta.inner import InnerLoop
from meta.streams import STREAM_PRETRAIN
from storage import checkpoint
from report.logs import CSV_NAME, read_log
from tests.fixtures.meta_fixtures import SIZE, cross_entropy, tiny_model, toy_tasks

MTL = MTLConfig(pre_max_epoch=3, pre_batch_size=8, pre_lr=0.05, pre_step_size=2, pre_gamma=0.5,
                update_step=2, shot=2, val_query=2, base_lr=0.05)
HEAD = head_adaptation(Adaptation(), learning_rate=MTL.base_lr, steps=MTL.update_step)
SPLITS = Splits(train=("class0", "class1", "class2"), val=("class3", "class4"), test=("class5",))


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks(6, 8, SIZE)


def _run(tasks, run_dir, stop_after, splits=SPLITS):
    model = tiny_model(dropout=0.0)
    result = pre_train(model, cross_entropy, tasks, splits, mtl=MTL, adaptation=HEAD,
                       monitor_tasks=2,
                       aug_rate=0.5, seed=0, rng=np.random.default_rng([0, 0]),
                       run_dir=str(run_dir), config_json="{}", stop_after=stop_after)
    return model, result


def test_step_lr():
    assert [pre_train_learning_rate(e, pre_lr=0.1, pre_gamma=0.2, pre_step_size=2)
            for e in range(5)] == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004])


def test_pools_only_the_given_classes(tasks):
    images, masks = pool_classes(tasks, SPLITS.train)
    assert images.shape == (24, SIZE, SIZE, 3) and masks.shape == (24, SIZE, SIZE)
    np.testing.assert_array_equal(images[8:16], tasks["class1"].images)
    with pytest.raises(ValueError, match="meta-train class"):
        pool_classes(tasks, ())


def test_step_adds_coupled_weight_decay(tasks):
    model = tiny_model(dropout=0.0)
    step = PretrainStep(model, cross_entropy, momentum=0.0, weight_decay=0.1)
    images, masks = tasks["class0"].images[:4], tasks["class0"].masks[:4]
    x = tf.constant(images, tf.float32)
    y = tf.one_hot(masks.astype(np.int32), 2)
    with tf.GradientTape() as tape:
        loss = cross_entropy(y, model(x, training=True))
    grads = tape.gradient(loss, step.variables)
    expected = [v.numpy() - 0.5 * (g.numpy() + 0.1 * v.numpy())
                for v, g in zip(step.variables, grads)]
    step(images, masks, 0.5, 0.0, np.array([1, 2]))
    for v, e in zip(step.variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_needs_val_classes(tasks, tmp_path):
    with pytest.raises(ValueError, match="--num_val_tasks"):
        _run(tasks, tmp_path, 1, Splits(train=SPLITS.train, val=(), test=SPLITS.test))


def test_keeps_best_val_weights_and_resumes_exactly(tasks, tmp_path):
    straight, result = _run(tasks, tmp_path / "straight", 2)
    _run(tasks, tmp_path / "resumed", 1)
    resumed, resumed_result = _run(tasks, tmp_path / "resumed", 2)
    assert (result.best_epoch, result.best_val_miou, result.epochs) == \
        (resumed_result.best_epoch, resumed_result.best_val_miou, resumed_result.epochs)
    for a, b in zip(straight.variables, resumed.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    rows = read_log(str(tmp_path / "straight" / CSV_NAME))
    resumed_rows = read_log(str(tmp_path / "resumed" / CSV_NAME))
    assert [r["meta_iter"] for r in rows] == [r["meta_iter"] for r in resumed_rows] == [1, 2]
    assert [(r["loss"], r["val_miou"]) for r in rows] == \
        [(r["loss"], r["val_miou"]) for r in resumed_rows]
    val = [r["val_miou"] for r in rows]
    with open(tmp_path / "straight" / BEST_INFO) as f:
        best = json.load(f)
    assert best["epoch"] == int(np.argmax(val)) + 1 == result.best_epoch
    assert checkpoint.read_state(str(tmp_path / "straight"))["step"] == 2
    # the file holds that epoch's weights: evaluating it again reproduces the logged val mIoU
    fresh = tiny_model(dropout=0.0)
    fresh.load_weights(os.path.join(tmp_path / "straight", BEST_WEIGHTS))
    again = evaluate(InnerLoop(fresh, cross_entropy, HEAD), tasks, SPLITS.val, HEAD,
                     EvalConfig(shots=MTL.shot, num_query=MTL.val_query, transductive=False,
                                eval_samples=2, serially_eval_all_test_tasks=False),
                     seed=0, stream=STREAM_PRETRAIN, split="val")
    assert again.mean_iou == pytest.approx(best["val_miou"], abs=1e-5)
