"""Reptile / FOMAML / FOMAML* against direct recomputations, on a tiny conv net."""
import numpy as np
import pytest
import tensorflow as tf

from data.episodes import sample_episode
from meta.algorithms import MetaLearner, split_tail
from meta.config import MetaConfig
from meta.adaptation import Adaptation
from meta.inner import InnerLoop, adapt, draw_batches, run_steps, support_tensors
from meta.streams import task_seeds
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks

SCHEDULE = Adaptation(learning_rate=0.05, steps=4, batch_size=3, aug_rate=0.5, sgd=True)


@pytest.fixture(scope="module")
def loop():
    return InnerLoop(tiny_model(dropout=0.0), cross_entropy, SCHEDULE)


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks(3, n=8)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _task_rngs(seed, num_tasks):
    """The generators meta_step gives its task slots (meta.streams, per_task)."""
    return [np.random.default_rng(s.tolist())
            for s in task_seeds(np.random.default_rng(seed), num_tasks)]


def test_reptile_with_meta_step_1_and_batch_1_equals_plain_fine_tuning(loop, tasks):
    learner = MetaLearner(loop, MetaConfig(algorithm="reptile", train_shots=5, inner=SCHEDULE))
    loop.full_state.save()
    learner.meta_step([tasks["class0"]], np.random.default_rng(7), meta_step_size=1.0)
    meta_updated = _values(loop.variables)
    loop.full_state.restore()
    rng, = _task_rngs(7, 1)  # the same draws, consumed in the same order
    episode = sample_episode(rng, tasks["class0"], 5, 0)
    adapt(loop, episode.support_images, episode.support_masks, SCHEDULE, rng)
    fine_tuned = _values(loop.variables)
    loop.full_state.restore()
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(fine_tuned, _values(loop.variables)))
    for a, b in zip(meta_updated, fine_tuned):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reptile_meta_step_moves_epsilon_of_the_mean_displacement(loop, tasks):
    learner = MetaLearner(loop, MetaConfig(algorithm="reptile", train_shots=5, inner=SCHEDULE))
    loop.full_state.save()
    theta = _values(loop.variables)
    phis = []
    for name, rng in zip(("class1", "class2"), _task_rngs(3, 2)):  # meta_step, by hand
        episode = sample_episode(rng, tasks[name], 5, 0)
        adapt(loop, episode.support_images, episode.support_masks, SCHEDULE, rng)
        phis.append(_values(loop.variables))
        for v, t in zip(loop.variables, theta):
            v.assign(t)
    loop.full_state.restore()
    learner.meta_step([tasks["class1"], tasks["class2"]], np.random.default_rng(3), 0.25)
    for got, t, p1, p2 in zip(_values(loop.variables), theta, *phis):
        np.testing.assert_allclose(got, t + 0.25 * ((p1 + p2) / 2 - t), rtol=1e-5, atol=1e-6)
    loop.full_state.restore()


def test_fomaml_update_equals_the_last_inner_step(loop, tasks):
    learner = MetaLearner(loop, MetaConfig(algorithm="fomaml", train_shots=5, inner=SCHEDULE))
    loop.full_state.save()
    theta = _values(loop.variables)
    learner.meta_step([tasks["class0"]], np.random.default_rng(11), meta_step_size=0.5)
    meta_update = [a - t for a, t in zip(_values(loop.variables), theta)]
    loop.full_state.restore()
    rng, = _task_rngs(11, 1)
    episode = sample_episode(rng, tasks["class0"], 5, 0)
    x, m = support_tensors(episode.support_images, episode.support_masks)
    indices, seeds = draw_batches(rng, 5, SCHEDULE)
    loop.reset_optimizer()
    run_steps(loop, x, m, indices[:-1], seeds[:-1], SCHEDULE)
    before = _values(loop.variables)
    run_steps(loop, x, m, indices[-1:], seeds[-1:], SCHEDULE, first_step=SCHEDULE.steps - 1)
    last_step = [a - b for a, b in zip(_values(loop.variables), before)]
    loop.full_state.restore()
    assert max(np.abs(u).max() for u in last_step) > 1e-5
    for got, want in zip(meta_update, last_step):
        np.testing.assert_allclose(got, 0.5 * want, rtol=1e-4, atol=1e-7)


def test_split_tail_disjoint_or_with_replacement():
    train, tail = split_tail(np.random.default_rng(0), 10, 4)
    assert len(train) == 6 and len(tail) == 4
    assert sorted(np.concatenate([train, tail]).tolist()) == list(range(10))
    train, tail = split_tail(np.random.default_rng(0), 10, 4, with_replacement=True)
    assert len(train) == 6 and len(tail) == 4 and set(train) | set(tail) <= set(range(10))
    with pytest.raises(ValueError, match="foml-tail"):
        split_tail(np.random.default_rng(0), 5, 5)


def test_fomaml_star_tail_is_held_out_unaugmented_and_gives_the_gradient(loop, tasks):
    learner = MetaLearner(loop, MetaConfig(algorithm="fomaml", train_shots=7, foml_tail=3,
                                           inner=SCHEDULE))
    calls = []
    original = loop.train_steps

    def spy(images, masks, indices, learning_rates, aug_rate, seeds):  # one call per run_steps
        for t in range(len(indices)):
            calls.append((images.numpy(), masks.numpy(), np.asarray(indices[t]),
                          learning_rates[t], aug_rate))
        return original(images, masks, indices, learning_rates, aug_rate, seeds)

    loop.full_state.save()
    theta = _values(loop.variables)
    loop.train_steps = spy
    try:
        learner.meta_step([tasks["class2"]], np.random.default_rng(5), meta_step_size=1.0)
    finally:
        del loop.train_steps
    assert len(calls) == SCHEDULE.steps
    train_images = {im.tobytes() for im in calls[0][0]}
    tail_images, tail_masks, tail_indices, lr, aug_rate = calls[-1]
    assert len(train_images) == 4 and len(tail_images) == 3
    assert not train_images & {im.tobytes() for im in tail_images}  # held out
    assert all(c[4] == SCHEDULE.aug_rate for c in calls[:-1]) and aug_rate == 0.0
    assert sorted(tail_indices.tolist()) == [0, 1, 2]  # the whole tail is the last batch
    update = [a - t for a, t in zip(_values(loop.variables), theta)]
    # With SGD the last step's update is -lr * grad of the tail loss at the pre-step weights.
    before_last = learner.direction.keywords["before_last"]  # FOMAML's own snapshot
    for v, b in zip(loop.variables, before_last.values):
        v.assign(b)
    y = tf.one_hot(tail_masks.astype(np.int32), 2)
    with tf.GradientTape() as tape:
        loss = cross_entropy(y, loop.model(tail_images, training=True))
    grads = tape.gradient(loss, loop.variables)
    loop.full_state.restore()
    for got, g in zip(update, grads):
        np.testing.assert_allclose(got, -lr * g.numpy(), rtol=1e-4, atol=1e-7)
