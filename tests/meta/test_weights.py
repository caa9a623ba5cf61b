"""meta.weights: list arithmetic checked element by element against numpy."""
import numpy as np
import pytest
import tensorflow as tf

from meta import weights


def _lists(seed=0):
    rng = np.random.default_rng(seed)
    a = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    b = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    return a, b


def test_add_subtract_scale_match_numpy():
    a, b = _lists()
    for got, want in zip(weights.add(a, b), [x + y for x, y in zip(a, b)]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    for got, want in zip(weights.subtract(a, b), [x - y for x, y in zip(a, b)]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    for got, want in zip(weights.scale(a, -0.25), [-0.25 * x for x in a]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_average_is_elementwise_mean_and_accepts_variables():
    a, b = _lists(1)
    c = [tf.Variable(x * 3.0) for x in a]
    got = weights.average([a, b, c])
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), (a[i] + b[i] + 3.0 * a[i]) / 3, rtol=1e-6)


def test_mismatched_lengths_and_empty_average_raise():
    a, b = _lists()
    with pytest.raises(ValueError, match="same length"):
        weights.add(a, b[:1])
    with pytest.raises(ValueError, match="at least one"):
        weights.average([])
