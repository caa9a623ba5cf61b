"""The inner step runs the augmentation it was built with (--augmentation), in one trace."""
import numpy as np
import pytest
import tensorflow as tf

from data.augment import augment_batch
from data.paper_augment import paper_augment_batch
from errors import UserError
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model

SIDE = 24


def ellipses(n):
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    centres = np.random.default_rng(3).uniform(7, SIDE - 7, size=(n, 2))
    return np.stack([((xx - cx) / 6) ** 2 + ((yy - cy) / 4) ** 2 < 1
                     for cy, cx in centres]).astype(np.float32)


@pytest.mark.parametrize("name,augment", [("paper", paper_augment_batch),
                                          ("metaseg", augment_batch)])
def test_inner_step_runs_the_named_augmentation_in_one_trace(name, augment):
    masks = ellipses(10)
    images = np.random.default_rng(4).uniform(0, 255, (10, SIDE, SIDE, 3)).astype(np.float32)
    loop = InnerLoop(tiny_model(size=SIDE, dropout=0.0), cross_entropy,
                     Adaptation(sgd=True, augmentation=name, aug_rate=0.5))
    twin = tiny_model(size=SIDE, dropout=0.0)  # the same init: tiny_model seeds itself
    for n, batch, seed, rate in ((10, 8, [1, 2], 0.5), (5, 4, [3, 9], 1.0), (7, 7, [5, 5], 0.8)):
        x, m = tf.constant(images[:n]), tf.constant(masks[:n])
        indices = np.arange(batch) % n
        loss = loop.train_step(x, m, indices, 0.0, rate, seed).numpy()
        ax, am = augment(tf.gather(x, indices), tf.gather(m, indices), tf.constant(rate),
                         tf.constant(seed, tf.int32))
        expected = cross_entropy(tf.one_hot(tf.cast(am, tf.int32), 2), twin(ax, training=True))
        np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-5)
    assert loop.trace_counts["train_step"] == 1


def test_unknown_augmentation_is_refused_where_it_is_set():
    with pytest.raises(UserError, match="augmentation must be one of"):
        Adaptation(augmentation="numpy", aug_rate=0.5)
