"""Custom layers: align-corners resize against TF1's, variable-rate dropout without retrace."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import ResizeBilinear, VariableDropout, leaf_layers, set_dropout_rate


@pytest.mark.parametrize("in_size, out_size", [((4, 4), (16, 16)), ((5, 7), (13, 3)),
                                               ((16, 16), (64, 64)), ((1, 3), (4, 6))])
def test_align_corners_resize_equals_tf1(in_size, out_size):
    x = np.random.default_rng(0).normal(size=(2, *in_size, 3)).astype("float32")
    ours = ResizeBilinear(out_size, align_corners=True)(x)
    tf1 = tf.compat.v1.image.resize_bilinear(x, out_size, align_corners=True)
    np.testing.assert_allclose(np.asarray(ours), tf1.numpy(), atol=1e-5)


def test_half_pixel_resize_equals_tf2_and_same_size_is_identity():
    x = np.random.default_rng(1).normal(size=(1, 5, 6, 2)).astype("float32")
    ours = ResizeBilinear((11, 4), align_corners=False)(x)
    np.testing.assert_allclose(np.asarray(ours), tf.image.resize(x, (11, 4)).numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ResizeBilinear((5, 6))(x)), x)


def test_resize_is_differentiable_and_serializable():
    x = tf.constant(np.random.default_rng(2).normal(size=(1, 4, 4, 1)), tf.float32)
    layer = ResizeBilinear((9, 9))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x))
    grad = tape.gradient(y, x).numpy()
    assert np.all(grad > 0)  # every input pixel feeds the output
    np.testing.assert_allclose(grad.sum(), 81.0, rtol=1e-5)  # the weights of each output sum to 1
    clone = ResizeBilinear.from_config(layer.get_config())
    assert (clone.size, clone.align_corners) == ((9, 9), True)


def _head_rate(model) -> float:
    """The rate the model's head dropout layer holds now."""
    layer, = [layer for layer in leaf_layers(model) if isinstance(layer, VariableDropout)]
    return float(layer.rate.numpy())


def test_variable_dropout_rate_changes_without_retrace():
    inputs = keras.Input((32, 32, 8))
    model = keras.Model(inputs, VariableDropout(0.0, name="final_dropout")(inputs))
    x = tf.constant(np.random.default_rng(3).uniform(1.0, 2.0, (4, 32, 32, 8)), tf.float32)
    step = tf.function(lambda t: model(t, training=True))
    np.testing.assert_array_equal(step(x).numpy(), x.numpy())  # rate 0: identity
    for rate in (0.5, 0.2):
        set_dropout_rate(model, rate)
        assert _head_rate(model) == pytest.approx(rate)
        y = step(x).numpy()
        dropped = y == 0
        assert abs(dropped.mean() - rate) < 0.02
        np.testing.assert_allclose(y[~dropped], x.numpy()[~dropped] / (1 - rate), rtol=1e-6)
    assert step.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(model(x, training=False).numpy(), x.numpy())


def test_dropout_rate_errors():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, VariableDropout(0.1)(inputs))
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="dropout rate"):
            set_dropout_rate(model, bad)
    plain = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="no VariableDropout"):
        set_dropout_rate(plain, 0.1)


def test_head_dropout_of_efficientlab(b0, images):
    """The model's own head dropout: the rate reaches the compiled call with no retrace."""
    layer = b0.get_layer("final_dropout")
    sub = keras.Model(b0.input, [layer.input, layer.output])
    step = tf.function(lambda t: sub(t, training=True))
    assert _head_rate(b0) == pytest.approx(0.5)
    try:
        for rate in (0.0, 0.3):
            set_dropout_rate(b0, rate)
            before, after = (t.numpy() for t in step(images))
            dropped = (after == 0) & (before != 0)
            assert abs(dropped.mean() - rate) < 0.02
            np.testing.assert_allclose(after[~dropped], before[~dropped] / (1 - rate), rtol=1e-5)
        assert step.experimental_get_tracing_count() == 1
    finally:
        set_dropout_rate(b0, 0.5)
