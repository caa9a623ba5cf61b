"""A task's inner steps as one compiled call give exactly what one call per step gives."""
import dataclasses

import numpy as np
import pytest

from meta.adaptation import Adaptation
from meta.inner import InnerLoop, adapt, draw_batches, run_steps, support_tensors
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks

# Dropout on: the per-call seed-generator state must advance the same way in both paths.
SCHEDULE = Adaptation(learning_rate=0.05, steps=5, batch_size=3, aug_rate=0.5,
                      scheduler="cosine_anneal", weight_decay=0.999, dropout_rate=0.3)


@pytest.fixture(scope="module")
def loop():
    return InnerLoop(tiny_model(), cross_entropy, SCHEDULE)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _run(loop, task, seed, on_step):
    loop.full_state.save()
    try:
        result = adapt(loop, task.images[:6], task.masks[:6], SCHEDULE,
                       np.random.default_rng(seed), on_step=on_step)
        return result, _values(loop.model.variables) + _values(loop.optimizer.variables)
    finally:
        loop.full_state.restore()


def test_one_compiled_call_equals_one_call_per_step(loop):
    task = toy_tasks(1, n=8)["class0"]
    seen = []
    stepwise, after_stepwise = _run(loop, task, 11, lambda t, loss: seen.append(loss) and False)
    fused, after_fused = _run(loop, task, 11, None)
    assert loop.trace_counts["train_steps"] == 1
    assert fused.steps_taken == stepwise.steps_taken == SCHEDULE.steps
    np.testing.assert_array_equal(fused.losses, stepwise.losses)
    np.testing.assert_array_equal(fused.losses, np.float32(seen))
    assert len(after_fused) == len(after_stepwise)
    for a, b in zip(after_fused, after_stepwise):  # weights, BN statistics, seeds, Adam slots
        np.testing.assert_array_equal(a, b)
    # the adaptation did move the weights (the comparison above is not of two no-ops)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(after_fused, _values(loop.model.variables)))


def test_any_number_of_steps_reuses_the_one_trace(loop):
    task = toy_tasks(1, n=8)["class0"]
    x, m = support_tensors(task.images[:6], task.masks[:6])
    loop.full_state.save()
    for steps, batch in ((1, 2), (3, 4), (7, 3)):
        schedule = dataclasses.replace(SCHEDULE, learning_rate=0.01, steps=steps,
                                       batch_size=batch, aug_rate=0.0)
        indices, seeds = draw_batches(np.random.default_rng(steps), 6, schedule)
        result = run_steps(loop, x, m, indices, seeds, schedule)
        assert result.losses.shape == (steps,) and np.isfinite(result.losses).all()
    loop.full_state.restore()
    assert loop.trace_counts["train_steps"] == 1


def test_callback_still_stops_early(loop):
    task = toy_tasks(1, n=8)["class0"]
    result, _ = _run(loop, task, 3, lambda steps_taken, loss: steps_taken >= 2)
    assert result.steps_taken == 2 and result.losses.shape == (2,)
