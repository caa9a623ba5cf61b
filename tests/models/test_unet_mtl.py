"""U-Net and MTL U-Net: shapes, SS convolutions against tf.nn, modes, pre-trained weight map."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.build import build_model
from models.config import LossConfig, ModelConfig
from models.losses import make_loss
from models.mtl import (ScaleShiftConv2D, ScaleShiftConv2DTranspose, head_variables,
                        load_pretrained_unet, set_mtl_mode)

SIZE = 64
UNET = ModelConfig(model_name="unet", image_size=SIZE, n_unet_encoding_stacks=3,
                   start_num_feature_maps_power=3, seed=1)


@pytest.fixture(scope="module")
def unet():
    return build_model(UNET)


@pytest.fixture(scope="module")
def mtl(unet):
    """An MTL U-Net (another seed) holding the U-Net's weights, in meta-transfer mode."""
    model = build_model(dataclasses.replace(UNET, model_name="mtl_unet", seed=2))
    load_pretrained_unet(model, unet)
    set_mtl_mode(model, "meta_transfer")
    return model


def _step(model, images, masks, lr=0.1):
    """One plain SGD step on every trainable variable; returns all variables' values before."""
    before = {v.path: v.numpy() for v in model.variables}
    loss_fn = make_loss(LossConfig(loss_name="bce_dice"), model)
    with tf.GradientTape() as tape:
        loss = loss_fn(tf.one_hot(masks, 2), model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
        assert g is not None and np.any(g.numpy() != 0), v.path
        v.assign(v - lr * g)
    return before


def test_unet_structure_and_output(unet, images):
    p = np.asarray(unet(images, training=False))
    assert p.shape == (2, SIZE, SIZE, 2) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    widths = [unet.get_layer(f"enc{k}_conv1").filters for k in (1, 2, 3)]
    assert widths == [8, 16, 32] and unet.get_layer("mid_conv2").filters == 64
    assert unet.get_layer("up3_transpose").output.shape[1:] == (16, 16, 32)
    assert unet.get_layer("dec1_conv2").output.shape[1:] == (SIZE, SIZE, 8)
    assert unet.get_layer("final_layer_weights").input.shape[1:] == (SIZE, SIZE, 8)


def test_scale_shift_conv_is_a_conv_with_scaled_kernel():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 9, 3)).astype("float32")
    conv = ScaleShiftConv2D(4, 3, padding="same")
    conv(x)
    conv.ss_scale.assign(rng.normal(size=(1, 1, 3, 4)))
    conv.ss_shift.assign(rng.normal(size=(4,)))
    kernel = conv.kernel.numpy() * conv.ss_scale.numpy()
    expected = tf.nn.conv2d(x, kernel, 1, "SAME") + conv.bias.numpy() + conv.ss_shift.numpy()
    np.testing.assert_allclose(np.asarray(conv(x)), expected.numpy(), rtol=1e-5, atol=1e-5)
    no_bias = ScaleShiftConv2D(4, 3, use_bias=False)
    no_bias(x)
    assert [w.name for w in no_bias.weights] == ["kernel", "ss_scale"]  # no bias: no shift


def test_scale_shift_transposed_conv():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, 6)).astype("float32")
    up = ScaleShiftConv2DTranspose(3, 2, strides=2)
    up(x)
    assert up.kernel.shape == (2, 2, 3, 6) and up.ss_scale.shape == (1, 1, 3, 6)
    up.ss_scale.assign(rng.normal(size=(1, 1, 3, 6)))
    up.ss_shift.assign(rng.normal(size=(3,)))
    kernel = up.kernel.numpy() * up.ss_scale.numpy()
    expected = tf.nn.conv2d_transpose(x, kernel, (2, 10, 10, 3), 2, "VALID") + \
        up.bias.numpy() + up.ss_shift.numpy()
    np.testing.assert_allclose(np.asarray(up(x)), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_loading_the_pretrained_unet_copies_everything_and_reproduces_it(unet, mtl, images):
    mtl_values = {v.path: v.numpy() for v in mtl.variables}
    copied = [v for v in unet.variables if "seed_generator" not in v.path]
    for v in copied:
        np.testing.assert_array_equal(mtl_values[v.path], v.numpy(), err_msg=v.path)
    assert sum("/kernel" in v.path for v in copied) == 3 * 2 + 2 + 3 * 2 + 3 + 1
    # scale 1 and shift 0: the MTL U-Net computes exactly what the U-Net computes
    np.testing.assert_allclose(np.asarray(mtl(images, training=False)),
                               np.asarray(unet(images, training=False)), atol=1e-6)


def test_mismatched_unet_is_an_error_naming_the_layer(mtl):
    deeper = build_model(dataclasses.replace(UNET, n_unet_encoding_stacks=2))
    with pytest.raises(ValueError, match=r"mid_conv1/kernel: shape \(3, 3, 16, 32\) in the "
                                         r"U-Net vs \(3, 3, 32, 64\)") as e:
        load_pretrained_unet(mtl, deeper)
    assert "enc3_conv1/kernel: MTL base weight with no U-Net source" in str(e.value)
    with pytest.raises(ValueError, match="MTL modes apply to --model_name mtl_unet"):
        set_mtl_mode(deeper, "meta_transfer")
    with pytest.raises(ValueError, match="MTL mode must be one of"):
        set_mtl_mode(mtl, "fine_tune")


def test_meta_transfer_step_trains_only_scale_shift_bn_and_head(mtl, images, masks):
    trainable = {v.path for v in mtl.trainable_variables}
    expected = {v.path for layer in mtl.layers for v in layer.weights
                if v.name in ("ss_scale", "ss_shift", "gamma", "beta")}
    expected |= {v.path for v in head_variables(mtl)}
    assert trainable == expected
    saved = [v.numpy() for v in mtl.variables]
    try:
        before = _step(mtl, images, masks)
        for v in mtl.variables:
            changed = not np.array_equal(before[v.path], v.numpy())
            if v.path in trainable:
                assert changed, v.path
            elif v.name in ("kernel", "bias"):
                assert not changed, f"frozen base weight {v.path} moved"
    finally:
        for v, value in zip(mtl.variables, saved):
            v.assign(value)


def test_pre_train_mode_trains_base_weights_not_scale_shift(mtl, images, masks):
    set_mtl_mode(mtl, "pre_train")
    saved = [v.numpy() for v in mtl.variables]
    try:
        names = {v.name for v in mtl.trainable_variables}
        assert "kernel" in names and not names & {"ss_scale", "ss_shift"}
        before = _step(mtl, images, masks)
        after = {v.path: v.numpy() for v in mtl.variables}
        assert not np.array_equal(before["enc1_conv1/kernel"], after["enc1_conv1/kernel"])
        assert np.array_equal(before["enc1_conv1/ss_scale"], after["enc1_conv1/ss_scale"])
    finally:
        set_mtl_mode(mtl, "meta_transfer")
        for v, value in zip(mtl.variables, saved):
            v.assign(value)


def test_unet_gradients_reach_every_trainable_variable(unet, images, masks):
    saved = [v.numpy() for v in unet.variables]
    try:
        _step(unet, images, masks)  # asserts a non-zero gradient for each variable
    finally:
        for v, value in zip(unet.variables, saved):
            v.assign(value)


def test_mtl_unet_saves_as_keras_file_with_its_mode(mtl, images, tmp_path):
    path = str(tmp_path / "mtl_unet.keras")
    mtl.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(images, training=False)),
                                  np.asarray(mtl(images, training=False)))
    assert {v.path for v in loaded.trainable_variables} == {v.path for v in mtl.trainable_variables}
