"""meta.schedules: inner learning-rate schedules and the meta-step anneal."""
import math

import pytest

from meta.schedules import inner_learning_rate, meta_step_size


def test_fixed_step_decay_and_cosine():
    assert inner_learning_rate(7, learning_rate=0.1, scheduler="fixed") == 0.1
    assert inner_learning_rate(7, learning_rate=0.1, scheduler="constant") == 0.1
    # step decay: 0.1 * 0.5 ** floor(t / 5)
    assert [inner_learning_rate(t, learning_rate=0.1, scheduler="step_decay") for t in (0, 4, 5, 12)] \
        == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert inner_learning_rate(500, learning_rate=0.1, scheduler="step") == 1e-7  # floor
    assert inner_learning_rate(0, learning_rate=0.2, scheduler="cosine_anneal", total_steps=10) \
        == pytest.approx(0.2)
    assert inner_learning_rate(5, learning_rate=0.2, scheduler="cosine_anneal", total_steps=10) \
        == pytest.approx(0.1)
    assert inner_learning_rate(3, learning_rate=0.2, scheduler="cosine_anneal", total_steps=10) \
        == pytest.approx(0.1 * (1 + math.cos(0.3 * math.pi)))
    with pytest.raises(ValueError, match="learning_rate_scheduler"):
        inner_learning_rate(0, learning_rate=0.1, scheduler="linear")


def test_meta_step_anneals_linearly():
    kw = dict(initial=0.1, final=0.00001, meta_iters=100)
    assert meta_step_size(0, **kw) == pytest.approx(0.1)
    assert meta_step_size(50, **kw) == pytest.approx((0.1 + 0.00001) / 2)
    assert meta_step_size(100, **kw) == pytest.approx(0.00001)
