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


def test_subtract_scale_match_numpy():
    a, b = _lists()
    for got, want in zip(weights.subtract(a, b), [x - y for x, y in zip(a, b)]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    for got, want in zip(weights.scale(a, -0.25), [-0.25 * x for x in a]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_subtract_accepts_variables():
    a, b = _lists(1)
    c = [tf.Variable(x * 3.0) for x in a]
    for got, x, y in zip(weights.subtract(c, b), a, b):
        np.testing.assert_allclose(got.numpy(), 3.0 * x - y, rtol=1e-6)


def test_mismatched_lengths_raise():
    a, b = _lists()
    with pytest.raises(ValueError, match="same length"):
        weights.subtract(a, b[:1])
