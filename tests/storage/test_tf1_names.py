"""TF1 name mapping rules (pure string logic, no TensorFlow)."""
import pytest

from storage import tf1_names

B3_BLOCKS = ["block1a", "block1b", "block2a", "block2b", "block2c", "block3a", "block3b", "block3c",
             "block4a", "block4b", "block4c", "block4d", "block4e",
             "block5a", "block5b", "block5c", "block5d", "block5e"]


def test_keras_blocks_are_numbered_in_network_order():
    names = [f"{b}_dwconv" for b in reversed(B3_BLOCKS)] + ["stem_conv", "rsd2_b0_conv"]
    assert tf1_names.keras_block_indices(names) == {b: i for i, b in enumerate(B3_BLOCKS)}


def test_blocks_without_expand_conv_shift_their_names():
    layers = [("block1a_dwconv", "kernel"), ("block1a_bn", "gamma"), ("block1a_project_conv", "kernel"),
              ("block1a_project_bn", "moving_variance"), ("block1b_dwconv", "kernel"),
              ("block1b_project_conv", "kernel"), ("block2a_expand_conv", "kernel"),
              ("block2a_expand_bn", "beta"), ("block2a_bn", "gamma"), ("block2a_se_expand", "bias"),
              ("block2a_project_conv", "kernel"), ("block2a_project_bn", "moving_mean")]
    mapping, unknown = tf1_names.keras_to_tf1_names(layers, "efficientnet-b3")
    assert unknown == []
    got = {k: v[0].removeprefix("efficientnet-b3/") for k, v in mapping.items()}
    assert got == {
        ("block1a_dwconv", "kernel"): "blocks_0/depthwise_conv2d/depthwise_kernel",
        ("block1a_bn", "gamma"): "blocks_0/tpu_batch_normalization/gamma",
        ("block1a_project_conv", "kernel"): "blocks_0/conv2d/kernel",
        ("block1a_project_bn", "moving_variance"): "blocks_0/tpu_batch_normalization_1/moving_variance",
        ("block1b_dwconv", "kernel"): "blocks_1/depthwise_conv2d/depthwise_kernel",
        ("block1b_project_conv", "kernel"): "blocks_1/conv2d/kernel",
        ("block2a_expand_conv", "kernel"): "blocks_2/conv2d/kernel",
        ("block2a_expand_bn", "beta"): "blocks_2/tpu_batch_normalization/beta",
        ("block2a_bn", "gamma"): "blocks_2/tpu_batch_normalization_1/gamma",
        ("block2a_se_expand", "bias"): "blocks_2/se/conv2d_1/bias",
        ("block2a_project_conv", "kernel"): "blocks_2/conv2d_1/kernel",
        ("block2a_project_bn", "moving_mean"): "blocks_2/tpu_batch_normalization_2/moving_mean",
    }


def test_decoder_names_follow_tf1_call_order_and_reduction_index():
    keys = [(f"rsd{i}_{p}_{k}", w) for i in (2, 4) for p in ("b0", "b1", "fuse")
            for k, w in (("conv", "kernel"), ("bn", "gamma"))] + [("final_layer_weights", "bias")]
    mapping, unknown = tf1_names.keras_to_tf1_names(keys, "efficientnet-b0")
    assert unknown == []
    assert mapping[("rsd4_b0_conv", "kernel")] == ("decode/decode_skip_connections_3/conv2d/kernel",
                                                   "decoder")
    assert mapping[("rsd4_fuse_bn", "gamma")][0] == \
        "decode/decode_skip_connections_3/batch_normalization_2/gamma"
    assert mapping[("rsd2_b1_conv", "kernel")][0] == "decode/decode_skip_connections_1/conv2d_1/kernel"
    assert mapping[("final_layer_weights", "bias")] == ("decode/final_layer_weights/bias", "head")
    # With the up-projection (channels differ from F) it is created first and the rest shift by one.
    with_residual = keys + [("rsd2_residual_conv", "kernel"), ("rsd2_residual_bn", "beta")]
    mapping, _ = tf1_names.keras_to_tf1_names(with_residual, "efficientnet-b0")
    assert mapping[("rsd2_residual_conv", "kernel")][0] == \
        "decode/decode_skip_connections_1/conv2d/kernel"
    assert mapping[("rsd2_b0_conv", "kernel")][0] == "decode/decode_skip_connections_1/conv2d_1/kernel"
    assert mapping[("rsd2_fuse_bn", "gamma")][0] == \
        "decode/decode_skip_connections_1/batch_normalization_3/gamma"
    assert mapping[("rsd4_b0_conv", "kernel")][0] == "decode/decode_skip_connections_3/conv2d/kernel"


def test_unknown_layers_are_reported_not_dropped():
    _, unknown = tf1_names.keras_to_tf1_names(
        [("aspp_branch_0", "kernel"), ("stem_conv", "bias"), ("block1a_dwconv", "bias")],
        "efficientnet-b0")
    assert unknown == [("aspp_branch_0", "kernel"), ("stem_conv", "bias"),
                       ("block1a_dwconv", "bias")]


@pytest.mark.parametrize("name, kwargs, reason", [
    ("efficientnet-b0/blocks_3/conv2d/kernel/Adam_1", {}, tf1_names.IGNORE_OPTIMIZER),
    ("beta1_power", {}, tf1_names.IGNORE_OPTIMIZER),
    ("decode/final_layer_weights/bias/Momentum", {}, tf1_names.IGNORE_OPTIMIZER),
    ("efficientnet-b0/stem/conv2d/kernel/ExponentialMovingAverage", {}, tf1_names.IGNORE_EMA),
    ("global_step", {}, tf1_names.IGNORE_GLOBAL_STEP),
    ("efficientnet-b3/blocks_18/conv2d/kernel", {}, tf1_names.IGNORE_UNUSED_BLOCK),
    ("efficientnet-b3/blocks_25/se/conv2d/bias", {}, tf1_names.IGNORE_UNUSED_BLOCK),
    ("efficientnet-b3/blocks_17/conv2d/kernel", {}, None),
    ("efficientnet-b0/blocks_11/conv2d/kernel", {}, None),  # B0 builds no block 11: must not match
    ("decode/final_layer_weights/kernel", {}, None),
    ("decode/final_layer_weights/kernel", {"restore_final_layer": False},
     tf1_names.IGNORE_FINAL_LAYER),
    ("efficientnet-b0/blocks_11/conv2d/kernel", {"backbone_only": True},
     tf1_names.IGNORE_IMAGENET_ONLY),
    ("efficientnet-b0/head/dense/kernel", {"backbone_only": True}, tf1_names.IGNORE_IMAGENET_ONLY),
    ("decode/decode_skip_connections_3/conv2d/bias", {"backbone_only": True},
     tf1_names.IGNORE_DECODER),
])
def test_ignore_reasons_are_explicit(name, kwargs, reason):
    fe = name.split("/")[0] if name.startswith("efficientnet") else "efficientnet-b0"
    assert tf1_names.ignore_reason(name, fe, **kwargs) == reason


def test_describe_checkpoint():
    names = ["efficientnet-b3/stem/conv2d/kernel", "decode/decode_skip_connections_3/conv2d/kernel",
             "decode/decode_skip_connections_1/conv2d/kernel", "beta1_power"]
    assert tf1_names.describe_checkpoint(names) == {"feature_extractors": ["efficientnet-b3"],
                                                    "rsd": [2, 4]}


def test_skip_decoder_names_and_its_depthwise_counter():
    keys = [("skipdec_skip_conv", "kernel"), ("skipdec_skip_bn", "beta"),
            ("skipdec_sep1_dwconv", "kernel"), ("skipdec_sep1_dw_bn", "gamma"),
            ("skipdec_sep1_pwconv", "kernel"), ("skipdec_sep1_pw_bn", "moving_mean"),
            ("skipdec_sep2_dwconv", "kernel"), ("skipdec_sep2_dw_bn", "beta"),
            ("skipdec_sep2_pwconv", "kernel"), ("skipdec_sep2_pw_bn", "moving_variance")]
    mapping, unknown = tf1_names.keras_to_tf1_names(keys, "efficientnet-b0")
    assert unknown == []
    scope = "decode/decode_skip_connections/"
    assert {k: v[0].removeprefix(scope) for k, v in mapping.items()} == {
        ("skipdec_skip_conv", "kernel"): "conv2d/kernel",
        ("skipdec_skip_bn", "beta"): "batch_normalization/beta",
        ("skipdec_sep1_dwconv", "kernel"): "depthwise_conv2d_11/depthwise_kernel",
        ("skipdec_sep1_dw_bn", "gamma"): "batch_normalization_1/gamma",
        ("skipdec_sep1_pwconv", "kernel"): "conv2d_1/kernel",
        ("skipdec_sep1_pw_bn", "moving_mean"): "batch_normalization_2/moving_mean",
        ("skipdec_sep2_dwconv", "kernel"): "depthwise_conv2d_12/depthwise_kernel",
        ("skipdec_sep2_dw_bn", "beta"): "batch_normalization_3/beta",
        ("skipdec_sep2_pwconv", "kernel"): "conv2d_2/kernel",
        ("skipdec_sep2_pw_bn", "moving_variance"): "batch_normalization_4/moving_variance"}
    assert {v[1] for v in mapping.values()} == {"decoder"}
    # B3 builds 26 blocks; a checkpoint whose counter differs is read by its own two names
    assert tf1_names.skip_decoder_depthwise_names("efficientnet-b3") == (
        "depthwise_conv2d_26", "depthwise_conv2d_27")
    names = [scope + n + "/depthwise_kernel" for n in ("depthwise_conv2d_9", "depthwise_conv2d")]
    assert tf1_names.skip_decoder_depthwise_names("efficientnet-b0", names) == (
        "depthwise_conv2d", "depthwise_conv2d_9")
