"""EfficientLab: shapes, the paper's parameter counts, layer names, --rsd graphs, variants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.build import build_model
from models.config import LossConfig, ModelConfig
from models.efficientlab import EFFICIENTNET_SKIPS
from models.layers import IMAGENET_MEAN, IMAGENET_STD
from models.losses import make_loss

SIZE = 64
# ml4ai/mliis models/efficientlab.py (verified there against the paper's TF1 graph): trainable
# parameters.
B0_ENCODER_PARAMS = 851_808  # stem + 11 MBConv blocks, cut at Keras' block5c_add
B0_RSD_2_4_PARAMS = 2_071_714  # EfficientLab-6-3 (--rsd 2 4)
B0_RSD_2_PARAMS = 1_368_242
B0_BN_STATISTICS = 17_504  # moving mean/variance of --rsd 2 4


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _probabilities_ok(p, n, size):
    p = np.asarray(p)
    assert p.shape == (n, size, size, 2) and p.dtype == np.float32
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_output_is_a_two_channel_softmax_at_64px(b0, images):
    assert b0.input_shape == (None, SIZE, SIZE, 3)
    _probabilities_ok(b0(images, training=False), 2, SIZE)
    _probabilities_ok(b0(images, training=True), 2, SIZE)


def test_parameter_counts_match_the_paper_code(b0):
    encoder = keras.Model(b0.input, b0.get_layer("block5c_add").output)
    trainable, encoder_params = count(b0.trainable_variables), count(encoder.trainable_variables)
    bn_stats = count(v for v in b0.non_trainable_variables if "moving_" in v.path)
    print(f"EfficientLab-B0 --rsd 2 4: {trainable:,} trainable; encoder {encoder_params:,}")
    # Exact equality is the stated range: our graph is the reference's, layer for layer.
    assert encoder_params == B0_ENCODER_PARAMS
    assert trainable == B0_RSD_2_4_PARAMS
    assert bn_stats == B0_BN_STATISTICS


def test_backbone_is_keras_efficientnet_truncated_at_block5c(b0):
    names = {layer.name for layer in b0.layers}
    for name in ("stem_conv", "stem_bn", "block1a_dwconv", "block1a_se_reduce", "block1a_se_expand",
                 "block1a_project_conv", "block1a_project_bn", "block2a_expand_conv",
                 "block5c_add", "final_dropout", "final_layer_weights", "logits_resize",
                 "probabilities"):
        assert name in names, name
    assert not any(n.startswith(("block6", "block7", "top_")) for n in names)
    skips = [b0.get_layer(n).output.shape for n in EFFICIENTNET_SKIPS["efficientnet-b0"].values()]
    assert [tuple(s[1:]) for s in skips] == [(32, 32, 16), (16, 16, 24), (8, 8, 40), (4, 4, 112)]


def test_drop_connect_rates_are_the_reference_ones(b0):
    rates = {layer.name: layer.rate for layer in b0.layers if layer.name.endswith("_drop")}
    # reference: 0.2 * block index / 11 for the 11 blocks of the truncated B0 (ml4ai/mliis
    # models/efficientnet/efficientnet_builder.py)
    expected = {"block2b_drop": 2, "block3b_drop": 4, "block4b_drop": 6, "block4c_drop": 7,
                "block5b_drop": 9, "block5c_drop": 10}
    assert set(rates) == set(expected)
    for name, index in expected.items():
        assert rates[name] == pytest.approx(0.2 * index / 11)


def test_model_normalizes_its_input_once_with_imagenet_statistics(b0, images):
    sub = keras.Model(b0.input, b0.get_layer("input_normalization").output)
    expected = (images / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(sub(images)), expected, rtol=1e-5, atol=1e-5)
    kinds = [type(layer).__name__ for layer in b0.layers]
    assert kinds.count("Normalization") == 1 and kinds.count("Rescaling") == 1


def test_rsd_2_4_graph(b0):
    # deepest first: rsd4 (skip = embedded map, a same-size "upsample"), then rsd2 (4 -> 16)
    assert b0.get_layer("rsd4_upsample").input.shape[1:] == (4, 4, 112)
    assert b0.get_layer("rsd4_concat").output.shape[-1] == 224
    assert b0.get_layer("rsd2_upsample").input is b0.get_layer("rsd4_add").output
    assert b0.get_layer("rsd2_upsample").output.shape[1:] == (16, 16, 112)
    assert b0.get_layer("rsd2_concat").output.shape[-1] == 112 + 24
    assert b0.get_layer("rsd2_b1_conv").dilation_rate == (2, 2)
    assert b0.get_layer("rsd2_pyramid").output.shape[-1] == 112 + 112 + 136
    assert any(t is b0.get_layer("rsd2_upsample").output for t in b0.get_layer("rsd2_add").input)
    assert b0.get_layer("final_layer_weights").input.shape[1:] == (16, 16, 112)
    assert not any(layer.name.endswith("_residual_conv") for layer in b0.layers)  # F in == F out


@pytest.mark.parametrize("rsd, residual, head_size", [((2,), True, 16), ((3, 1), False, 32),
                                                      ((), True, 4)])
def test_rsd_choices_change_the_graph(rsd, residual, head_size):
    cfg = ModelConfig(image_size=SIZE, rsd=rsd, disable_rsd_residual_connections=not residual)
    model = build_model(cfg)
    names = {layer.name for layer in model.layers}
    assert {n.split("_")[0] for n in names if n.startswith("rsd")} == {f"rsd{r}" for r in rsd}
    has_residual = any(n.endswith("_add") and n.startswith("rsd") for n in names)
    assert has_residual == (residual and bool(rsd))
    assert model.get_layer("final_layer_weights").input.shape[1:3] == (head_size, head_size)
    if rsd == (3, 1):  # rsd3 runs first, on the embedded map; rsd1 takes its output
        assert model.get_layer("rsd3_upsample").input.shape[1:] == (4, 4, 112)
        assert model.get_layer("rsd1_upsample").input is model.get_layer("rsd3_fuse_bn").output
    if rsd == (2,):
        assert count(model.trainable_variables) == B0_RSD_2_PARAMS
    _probabilities_ok(model(np.zeros((1, SIZE, SIZE, 3), np.float32)), 1, SIZE)


def test_gradients_reach_every_trainable_variable(b0, images, masks):
    loss_fn = make_loss(LossConfig(loss_name="bce_dice", l2=True), b0)
    with tf.GradientTape() as tape:
        loss = loss_fn(tf.one_hot(masks, 2), b0(images, training=True))
    grads = tape.gradient(loss, b0.trainable_variables)
    missing = [v.path for v, g in zip(b0.trainable_variables, grads)
               if g is None or not np.all(np.isfinite(g)) or not np.any(np.asarray(g) != 0)]
    assert not missing


def test_spp_and_skip_decoding_variants(images):
    cfg = ModelConfig(image_size=SIZE, rsd=(4,), spatial_pyramid_pooling=True, skip_decoding=True)
    model = build_model(cfg)
    assert model.get_layer("spp_b1_conv").dilation_rate == (6, 6)
    assert model.get_layer("spp_fuse_conv").output.shape[1:] == (4, 4, 112)
    # the reference's order: pyramid -> skip decoder (stride 4) -> RSD modules (reference's
    # `decode`), so RSD 4 resizes the skip decoder's 16x16 map down to its 4x4 skip
    assert model.get_layer("skipdec_upsample").input is model.get_layer("spp_fuse_dropout").output
    assert model.get_layer("skipdec_skip_conv").input is model.get_layer("block2b_add").output
    assert model.get_layer("rsd4_upsample").input is model.get_layer("skipdec_sep2_pw_swish").output
    assert model.get_layer("rsd4_upsample").input.shape[1:] == (16, 16, 112 + 56)
    assert model.get_layer("rsd4_residual_conv").input.shape[1:] == (4, 4, 112 + 56)
    assert model.get_layer("final_layer_weights").input.shape[1:] == (4, 4, 112)
    _probabilities_ok(model(images, training=False), 2, SIZE)
    # its batch norms use batch statistics even at prediction: the output depends on the batch
    alone = np.asarray(model(images[:1], training=False))
    together = np.asarray(model(images, training=False))[:1]
    assert not np.allclose(alone, together, atol=1e-4)


def test_plain_efficientlab_predicts_each_image_independently(b0, images):
    alone = np.asarray(b0(images[:1], training=False))
    np.testing.assert_allclose(alone, np.asarray(b0(images, training=False))[:1], atol=1e-5)


def test_efficientnet_b3_encoder():
    model = build_model(ModelConfig(image_size=SIZE, feature_extractor_name="efficientnet-b3",
                                    rsd=(2, 4)))
    names = {layer.name for layer in model.layers}
    assert "block5e_add" in names and not any(n.startswith(("block6", "block7")) for n in names)
    skips = [model.get_layer(n).output.shape[1:]
             for n in EFFICIENTNET_SKIPS["efficientnet-b3"].values()]
    assert [tuple(s) for s in skips] == [(32, 32, 24), (16, 16, 32), (8, 8, 48), (4, 4, 136)]
    assert model.get_layer("rsd2_fuse_conv").filters == 136
    encoder = keras.Model(model.input, model.get_layer("block5e_add").output)
    print(f"EfficientLab-B3 --rsd 2 4: {count(model.trainable_variables):,} trainable; "
          f"encoder {count(encoder.trainable_variables):,}")
    _probabilities_ok(model(np.zeros((1, SIZE, SIZE, 3), np.float32)), 1, SIZE)


def test_same_seed_same_weights_and_keras_file_round_trip(b0, images, tmp_path):
    path = str(tmp_path / "efficientlab.keras")
    b0.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(images, training=False)),
                                  np.asarray(b0(images, training=False)))
    again = build_model(ModelConfig(image_size=SIZE, rsd=(2, 4)))
    other = build_model(ModelConfig(image_size=SIZE, rsd=(2, 4), seed=1))
    for a, b in zip(b0.trainable_variables, again.trainable_variables):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    assert not all(np.array_equal(a, c) for a, c in zip(b0.trainable_variables,
                                                          other.trainable_variables))


@pytest.mark.parametrize("model_name", ["efficientlab", "unet", "mtl_unet"])
def test_every_model_at_224px(model_name):
    model = build_model(ModelConfig(model_name=model_name, image_size=224))
    image = np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    _probabilities_ok(model(image, training=False), 1, 224)


def test_config_errors_name_the_flag():
    with pytest.raises(ValueError, match="--rsd"):
        ModelConfig(rsd=(5,))
    with pytest.raises(ValueError, match="--feature_extractor_name"):
        ModelConfig(feature_extractor_name="efficientnet-b7")
    from storage.tf1_checkpoint import restore_backbone
    unet = ModelConfig(model_name="unet", image_size=32, n_unet_encoding_stacks=1,
                       restore_efficient_net_weights_from="x.h5")
    with pytest.raises(ValueError, match="--restore_efficient_net_weights_from"):
        restore_backbone(build_model(unet), unet)
