"""Meta-transfer learning (baselines/mtl.py): frozen base kernels, head-only inner loop, first-order
outer step checked against a second, eager computation."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from baselines.config import MTLConfig
from baselines.mtl import MTLLearner, meta_learning_rate, mtl_meta_config
from data.episodes import sample_episode
from meta.adaptation import Adaptation, head_adaptation
from meta.config import MetaConfig
from meta.inner import InnerLoop, adapt
from models.build import build_model
from models.config import LossConfig, ModelConfig
from models.losses import make_loss
from models.mtl import head_variables, load_pretrained_unet, set_mtl_mode
from modes.mtl import _base_kernels
from tests.fixtures.meta_fixtures import toy_tasks

SIZE = 32
UNET = ModelConfig(model_name="unet", image_size=SIZE, n_unet_encoding_stacks=2,
                   start_num_feature_maps_power=2, seed=1)
MTL = MTLConfig(update_step=3, shot=3, train_query=2, base_lr=0.05, meta_lr1=1e-3, meta_lr2=1e-2)
HEAD = head_adaptation(Adaptation(), learning_rate=MTL.base_lr, steps=MTL.update_step)


def _values(variables):
    return {v.path: v.numpy() for v in variables}


@pytest.fixture(scope="module")
def setup():
    """A 'pre-trained' U-Net (seed 1) loaded into an MTL U-Net built from another seed (2)."""
    tasks = toy_tasks(4, 10, SIZE)
    unet = build_model(UNET)
    model = build_model(dataclasses.replace(UNET, model_name="mtl_unet", seed=2))
    set_mtl_mode(model, "meta_transfer")
    load_pretrained_unet(model, unet)
    loss_fn = make_loss(LossConfig(), model)
    loop = InnerLoop(model, loss_fn, HEAD)
    learner = MTLLearner(loop, MTL, HEAD)
    return tasks, unet, model, loop, learner


@pytest.fixture
def restored(setup):
    """Every model and optimizer variable put back after the test."""
    _, _, model, loop, learner = setup
    variables = list(model.variables) + list(loop.optimizer.variables) + \
        [v for o in learner.outer_optimizers for v in o.variables]
    saved = [v.numpy() for v in variables]
    yield setup
    for v, value in zip(variables, saved):
        v.assign(value)


def test_loading_copies_every_pretrained_kernel(setup):
    _, unet, model, _, _ = setup
    mtl_by_path = _values(model.variables)
    frozen = {v.path for v in _base_kernels(model)}
    copied = 0
    for v in unet.variables:
        if "seed" in v.path:
            continue
        assert v.path in mtl_by_path, f"{v.path} has no counterpart in the MTL U-Net"
        np.testing.assert_array_equal(mtl_by_path[v.path], v.numpy(), err_msg=v.path)
        copied += 1
    # every conv kernel of the plain U-Net is a frozen base kernel of the MTL U-Net
    conv_kernels = {v.path for v in unet.variables if v.path.endswith("/kernel")
                    and not v.path.startswith("final_layer_weights")}
    assert conv_kernels and conv_kernels <= frozen
    assert copied == len([v for v in unet.variables if "seed" not in v.path])


def test_loading_a_mismatched_unet_names_the_layer():
    bigger = build_model(dataclasses.replace(UNET, start_num_feature_maps_power=3))
    model = build_model(dataclasses.replace(UNET, model_name="mtl_unet"))
    with pytest.raises(ValueError) as e:
        load_pretrained_unet(model, bigger)
    assert "conv" in str(e.value) or "final_layer_weights" in str(e.value)


def test_inner_loop_adapts_only_the_head(restored):
    tasks, _, model, loop, _ = restored
    head = {v.path for v in head_variables(model)}
    before = _values(model.trainable_variables + _base_kernels(model))
    episode = sample_episode(np.random.default_rng(0), tasks["class0"], MTL.shot, 0)
    result = adapt(loop, episode.support_images, episode.support_masks,
                   HEAD, np.random.default_rng(1))
    assert result.steps_taken == MTL.update_step
    after = _values(model.trainable_variables + _base_kernels(model))
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == head


def _adam_first_step(g, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    m, v = (1 - beta_1) * g, (1 - beta_2) * g * g
    return -lr * np.sqrt(1 - beta_2) / (1 - beta_1) * m / (np.sqrt(v) + epsilon)


def test_outer_step_is_first_order_mtl(restored):
    """Second computation: eager head-only SGD on the support, then the query gradient at the
    adapted head moves scale/shift/BN (Adam, meta_lr1) and the head *init* (Adam, meta_lr2)."""
    tasks, _, model, loop, _ = restored
    learner = MTLLearner(loop, MTL, HEAD)  # fresh Adam state: the first step has a closed form
    head, meta_vars = learner.head, learner.meta_variables
    init = _values(model.trainable_variables + _base_kernels(model))
    episode = sample_episode(np.random.default_rng(7), tasks["class1"], MTL.shot, MTL.train_query)
    one_hot = lambda m: tf.one_hot(m.astype(np.int32), 2)  # noqa: E731
    x, y = tf.constant(episode.support_images, tf.float32), one_hot(episode.support_masks)
    for _ in range(MTL.update_step):
        with tf.GradientTape() as tape:
            loss = loop.loss_fn(y, model(x, training=True))
        for v, g in zip(head, tape.gradient(loss, head)):
            v.assign(v - MTL.base_lr * g)
    xq, yq = tf.constant(episode.query_images, tf.float32), one_hot(episode.query_masks)
    with tf.GradientTape() as tape:
        query_loss = loop.loss_fn(yq, model(xq, training=True))
    grads = tape.gradient(query_loss, meta_vars + head)
    expected = {v.path: init[v.path] + _adam_first_step(g.numpy(), MTL.meta_lr1)
                for v, g in zip(meta_vars, grads[:len(meta_vars)])}
    expected.update({v.path: init[v.path] + _adam_first_step(g.numpy(), MTL.meta_lr2)
                     for v, g in zip(head, grads[len(meta_vars):])})
    for v in head:
        v.assign(init[v.path])

    loss, inner_losses = learner.task_step(tasks["class1"], np.random.default_rng(7),
                                           MTL.meta_lr1, MTL.meta_lr2)
    assert len(inner_losses) == MTL.update_step
    np.testing.assert_allclose(loss, float(query_loss), rtol=1e-4)
    after = _values(model.trainable_variables + _base_kernels(model))
    for path, value in expected.items():
        np.testing.assert_allclose(after[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
    for v in _base_kernels(model):
        np.testing.assert_array_equal(after[v.path], init[v.path], err_msg=v.path)


def test_meta_training_keeps_every_base_kernel_and_learns(restored):
    tasks, unet, model, loop, learner = restored
    names = sorted(tasks)
    pretrained = _values(unet.variables)
    before = _values(learner.meta_variables + learner.head)
    rng = np.random.default_rng(3)
    losses = [learner.meta_step([tasks[names[i % len(names)]]], rng, MTL.meta_lr1)
              for i in range(3)]
    assert all(np.isfinite(losses))
    kernels = _base_kernels(model)
    assert len(kernels) >= 2 * 2 * 3  # 2 encoder stacks + middle + decoder, 2 convs each
    for v in kernels:
        np.testing.assert_array_equal(v.numpy(), pretrained[v.path], err_msg=v.path)
    after = _values(learner.meta_variables + learner.head)
    moved = [p for p in before if not np.array_equal(before[p], after[p])]
    assert any("scale" in p for p in moved) and any("gamma" in p for p in moved)
    assert all(p in moved for p in (v.path for v in learner.head))
    # one trace for every task: the inner step and the outer step
    assert loop.trace_counts["train_steps"] == 1  # a task's steps: one compiled call
    assert learner._outer_step.experimental_get_tracing_count() == 1


def test_step_lr_decays_both_rates_per_epoch():
    lr = [meta_learning_rate(s, initial=1.0, num_batch=2, step_size=3, gamma=0.5)
          for s in range(14)]
    assert lr[:6] == [1.0] * 6 and lr[6:12] == [0.5] * 6 and lr[12:] == [0.25] * 2


def test_the_phases_adapt_the_head_as_they_record_it():
    """--phase runs' adaptation (cfg.adapt, in config.json) is the head's, as the meta-training
    tasks, the monitor and meta_eval run it; the outer loop runs one task per step."""
    from args import parse_args
    from modes.mtl import eval_config
    cfg = parse_args(["--model_name", "mtl_unet", "--phase", "meta_eval", "--data-dir", "x",
                      "--update_step", "7", "--base_lr", "0.02", "--teshot", "5",
                      "--test_query", "4", "--final_layer_dropout_rate", "0.1", "--augment"])
    a = cfg.adapt
    assert (a.head_only, a.sgd, a.learning_rate, a.steps, a.batch_size, a.aug_rate,
            a.dropout_rate, a.scheduler) == (True, True, 0.02, 7, None, 0.0, 0.1, "fixed")
    assert cfg.meta.inner.aug_rate == 0.5 and not cfg.meta.inner.head_only  # pre-training's
    evaluated = eval_config(cfg)
    assert evaluated.adapt == a and (evaluated.eval.shots, evaluated.eval.num_query) == (5, 4)
    mtl = MTLConfig(update_step=7, base_lr=0.02, max_epoch=3, num_batch=4, teshot=5)
    meta = mtl_meta_config(mtl, MetaConfig(monitor_tasks=3))
    assert (meta.meta_iters, meta.meta_batch_size, meta.eval_interval, meta.monitor_tasks) == \
        (12, 1, 4, 3)


def test_ce_dice_includes_the_dice_term(setup):
    unet = setup[1]
    rng = np.random.default_rng(0)
    masks = (rng.random((2, 8, 8)) < 0.4).astype(np.int32)
    y = tf.one_hot(masks, 2)
    p = tf.nn.softmax(tf.constant(rng.normal(size=(2, 8, 8, 2)), tf.float32))
    losses = {name: float(make_loss(LossConfig(loss_name=name), unet)(y, p))
              for name in ("cross_entropy", "dice", "ce_dice")}
    assert losses["dice"] > 0.1
    np.testing.assert_allclose(losses["ce_dice"], losses["cross_entropy"] + losses["dice"],
                               rtol=1e-5)
