"""Variable names of the reference's TF1 checkpoints, mapped onto our Keras EfficientLab layers.

The paper's code (ml4ai/mliis, TF 1.15) names its variables in two ways:
* the backbone is the TF TPU EfficientNet (`efficientnet-b0/stem/...`, `.../blocks_<i>/...`), whose
  `tf.layers` objects are named when first called inside each block's variable scope (the mapping
  matches Keras' own converter, keras `applications/efficientnet_weight_update_util.py`);
* the decoder calls `tf.layers.conv2d` / `tf.layers.batch_normalization` without names inside
  `decode/decode_skip_connections_<reduction - 1>`, so TF1 numbers them in call order
  (`conv2d`, `conv2d_1`, ..., `batch_normalization`, `batch_normalization_1`, ...).
This module is pure string logic: which TF1 tensor fills which Keras weight, and which TF1 tensors
are deliberately left out (with the reason). Reading and assigning live in
`storage/tf1_checkpoint.py`.
"""
from __future__ import annotations

import re

BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
DECODER_SCOPE = "decode"
FINAL_LAYER_SCOPE = "decode/final_layer_weights"
FINAL_LAYER_NAME = "final_layer_weights"  # Keras layer name of the head (CONTRACTS)
# Call order inside the reference's residual_skip_decoder: the optional 1x1 up-projection of the
# upsampled map (our `residual` branch, only when its channels differ from F), then branch 0 (1x1),
# branch 1 (3x3, dilation 2) and the fusing 3x3 conv. Each is conv -> swish -> BN.
RSD_PARTS = ("residual", "b0", "b1", "fuse")
# --skip_decoding lives in the unnumbered scope `decode/decode_skip_connections`: tf.layers numbers
# the skip's 1x1 conv and BN, then per separable block BN, 1x1 conv, BN in call order. Its two
# depthwise convs are plain Keras layers, whose names come from a graph-wide counter that the
# backbone's DepthwiseConv2D layers (a Keras/tf.layers hybrid, one per block built) have already
# advanced: `depthwise_conv2d_<B>`, `_<B+1>` with B the blocks built. The loader takes the two
# `depthwise_conv2d*` tensors of the scope in numeric order, so the counter need not be exact.
SKIP_DECODER_SCOPE = f"{DECODER_SCOPE}/decode_skip_connections"
_SKIP_DECODER_LAYER = re.compile(r"^skipdec_(skip|sep1|sep2)_(conv|bn|dwconv|dw_bn|pwconv|pw_bn)$")
_SKIP_DEPTHWISE = re.compile(re.escape(SKIP_DECODER_SCOPE) +
                             r"/(depthwise_conv2d(?:_(\d+))?)/depthwise_kernel$")

# Blocks the backbone taps: stem + blocks_0..N-1 (ml4ai/mliis
# models/efficientnet/efficientnet_builder.py: 11 for B0, ending at reduction_4 =
# Keras block5c; 18 for B3, ending at the 136-channel stage = Keras block5e).
USED_BLOCKS = {"efficientnet-b0": 11, "efficientnet-b3": 18}
# Blocks the reference builds but never uses. Its truncation rule stops before a stage whose
# *un-scaled* cumulative repeat count exceeds max_block_num + 1; for B3 (max_block_num 17) that
# truncates nothing, so all 26 blocks create variables, though EfficientLab reads reduction_4
# (blocks_17). B0 (max_block_num 10) builds exactly the 11 blocks it uses.
UNUSED_BLOCKS = {"efficientnet-b0": (), "efficientnet-b3": tuple(range(18, 26))}
# An ImageNet checkpoint of the TF TPU EfficientNet (for --restore_efficient_net_weights_from) also
# holds the blocks after reduction_4 and the classifier head; only the backbone scope is read there.
IMAGENET_ONLY_BLOCKS = {"efficientnet-b0": tuple(range(11, 16)),
                        "efficientnet-b3": tuple(range(18, 26))}

# TF1 optimizer state: slot variables `<var>/<slot>` and Adam's non-slot `beta{1,2}_power`.
OPTIMIZER_SLOTS = ("Adam", "Adam_1", "Momentum", "RMSProp", "RMSProp_1", "Adagrad",
                   "Adadelta", "Adadelta_1", "Ftrl", "Ftrl_1")
_BETA_POWER = re.compile(r"^beta[12]_power(_\d+)?$")
_KERAS_BLOCK = re.compile(r"^block(\d+)([a-z])_(.+)$")
_RSD_LAYER = re.compile(r"^rsd(\d)_(residual|b0|b1|fuse)_(conv|bn)$")

IGNORE_OPTIMIZER = "optimizer slot (not part of the meta-learned state)"
IGNORE_EMA = "ExponentialMovingAverage shadow (the reference restores the raw variables)"
IGNORE_GLOBAL_STEP = "global_step"
IGNORE_UNUSED_BLOCK = "backbone block the reference builds but never uses"
IGNORE_FINAL_LAYER = "final layer not restored (--do_not_restore_final_layer_weights)"
IGNORE_IMAGENET_ONLY = ("ImageNet EfficientNet block after reduction_4 or classifier head "
                        "(backbone-only restore)")
IGNORE_DECODER = "decoder not restored (backbone-only restore)"


def keras_block_indices(layer_names: list[str]) -> dict[str, int]:
    """Number the Keras EfficientNet blocks (`block1a`, `block2a`, ...) as the TF `blocks_<i>` scopes.

    Args:
        layer_names: every layer name of the Keras model.
    Returns:
        {"block1a": 0, "block2a": 1, ...}: blocks in network order, the TF index being the position.
    """
    blocks = {(int(m.group(1)), m.group(2)) for m in map(_KERAS_BLOCK.match, layer_names) if m}
    return {f"block{stage}{letter}": i for i, (stage, letter) in enumerate(sorted(blocks))}


def _block_tf_name(part: str, weight: str, has_expand: bool) -> str | None:
    """TF name (inside `blocks_<i>/`) of one Keras MBConv weight, or None if `part` is unknown."""
    # Without the expand conv (expand ratio 1) the block's first conv is the projection and its
    # BN counter starts at the depthwise BN, so every later name shifts down by one.
    shift = 0 if has_expand else 1
    bn = ("tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2")
    if part == "expand_conv" and weight == "kernel" and has_expand:
        return "conv2d/kernel"
    if part == "expand_bn" and weight in BN_WEIGHTS and has_expand:
        return f"{bn[0]}/{weight}"
    if part == "dwconv" and weight == "kernel":
        return "depthwise_conv2d/depthwise_kernel"
    if part == "bn" and weight in BN_WEIGHTS:
        return f"{bn[1 - shift]}/{weight}"
    if part in ("se_reduce", "se_expand") and weight in ("kernel", "bias"):
        return f"se/{'conv2d' if part == 'se_reduce' else 'conv2d_1'}/{weight}"
    if part == "project_conv" and weight == "kernel":
        return "conv2d_1/kernel" if has_expand else "conv2d/kernel"
    if part == "project_bn" and weight in BN_WEIGHTS:
        return f"{bn[2 - shift]}/{weight}"
    return None


def _numbered(base: str, k: int) -> str:
    """TF1's auto-name for the k-th (0-based) unnamed layer of one type in a scope."""
    return base if k == 0 else f"{base}_{k}"


def skip_decoder_depthwise_names(feature_extractor_name: str,
                                 checkpoint_names=None) -> tuple[str, str]:
    """Scope-relative names of the skip decoder's two depthwise convs.

    Args:
        feature_extractor_name: the backbone (how many blocks the reference builds).
        checkpoint_names: the checkpoint's tensor names; when they hold exactly two depthwise
            kernels in the skip decoder's scope, those are used (numeric order).
    Returns:
        (first, second), e.g. ("depthwise_conv2d_11", "depthwise_conv2d_12") for B0.
    """
    found = sorted(((int(m.group(2) or 0), m.group(1)) for m in
                    map(_SKIP_DEPTHWISE.match, checkpoint_names or ()) if m))
    if len(found) == 2:
        return found[0][1], found[1][1]
    built = USED_BLOCKS[feature_extractor_name] + len(UNUSED_BLOCKS[feature_extractor_name])
    return f"depthwise_conv2d_{built}", f"depthwise_conv2d_{built + 1}"


def _skip_decoder_tf_name(part: str, kind: str, weight: str, depthwise: tuple[str, str]
                          ) -> str | None:
    """TF1 name (inside the skip decoder's scope) of one `skipdec_*` Keras weight."""
    if part == "skip":
        if kind == "conv" and weight == "kernel":
            return "conv2d/kernel"
        return f"batch_normalization/{weight}" if kind == "bn" and weight in BN_WEIGHTS else None
    j = int(part[-1])  # separable block 1 or 2
    if kind == "dwconv" and weight == "kernel":
        return f"{depthwise[j - 1]}/depthwise_kernel"
    if kind == "pwconv" and weight == "kernel":
        return f"conv2d_{j}/kernel"
    if kind in ("dw_bn", "pw_bn") and weight in BN_WEIGHTS:
        return f"batch_normalization_{2 * j - (kind == 'dw_bn')}/{weight}"
    return None


def keras_to_tf1_names(weight_keys: list[tuple[str, str]], feature_extractor_name: str,
                       checkpoint_names=None
                       ) -> tuple[dict[tuple[str, str], tuple[str, str]], list[tuple[str, str]]]:
    """Map Keras EfficientLab weights (layer name, weight name) onto reference TF1 tensor names.

    Args:
        weight_keys: (layer name, weight name) of every Keras weight that should come from the
            checkpoint, e.g. ("block2a_expand_conv", "kernel"), ("rsd4_b0_bn", "moving_mean").
        feature_extractor_name: "efficientnet-b0" or "efficientnet-b3" (the TF backbone scope).
        checkpoint_names: the checkpoint's tensor names, to resolve the skip decoder's depthwise
            names (`skip_decoder_depthwise_names`); None uses the derived default.
    Returns:
        (mapping, unknown): mapping[(layer, weight)] = (TF1 name, group) with group "backbone",
        "decoder" or "head"; unknown lists the keys no rule covers (the caller reports them).
    """
    layer_names = sorted({layer for layer, _ in weight_keys})
    blocks = keras_block_indices(layer_names)
    expanded = {m.group(0)[:m.end(2)] for m in map(_KERAS_BLOCK.match, layer_names)
                if m and m.group(3) == "expand_conv"}
    # RSD modules: which parts exist decides the TF1 counters inside each module's scope.
    rsd_parts: dict[int, list[str]] = {}
    for m in filter(None, map(_RSD_LAYER.match, layer_names)):
        parts = rsd_parts.setdefault(int(m.group(1)), [])
        if m.group(2) not in parts:
            parts.append(m.group(2))
    mapping, unknown = {}, []
    fe = feature_extractor_name
    depthwise = skip_decoder_depthwise_names(fe, checkpoint_names)
    for layer, weight in weight_keys:
        name, group = None, "backbone"
        block = _KERAS_BLOCK.match(layer)
        rsd = _RSD_LAYER.match(layer)
        skipdec = _SKIP_DECODER_LAYER.match(layer)
        if layer == "stem_conv" and weight == "kernel":
            name = f"{fe}/stem/conv2d/kernel"
        elif layer == "stem_bn" and weight in BN_WEIGHTS:
            name = f"{fe}/stem/tpu_batch_normalization/{weight}"
        elif block:
            prefix = f"block{block.group(1)}{block.group(2)}"
            inner = _block_tf_name(block.group(3), weight, prefix in expanded)
            name = inner and f"{fe}/blocks_{blocks[prefix]}/{inner}"
        elif rsd:
            reduction, part, kind = int(rsd.group(1)), rsd.group(2), rsd.group(3)
            k = [p for p in RSD_PARTS if p in rsd_parts[reduction]].index(part)
            scope = f"{DECODER_SCOPE}/decode_skip_connections_{reduction - 1}"
            if kind == "conv" and weight in ("kernel", "bias"):
                name = f"{scope}/{_numbered('conv2d', k)}/{weight}"
            elif kind == "bn" and weight in BN_WEIGHTS:
                name = f"{scope}/{_numbered('batch_normalization', k)}/{weight}"
            group = "decoder"
        elif skipdec:
            inner = _skip_decoder_tf_name(skipdec.group(1), skipdec.group(2), weight, depthwise)
            name, group = inner and f"{SKIP_DECODER_SCOPE}/{inner}", "decoder"
        elif layer == FINAL_LAYER_NAME and weight in ("kernel", "bias"):
            name, group = f"{FINAL_LAYER_SCOPE}/{weight}", "head"
        if name is None:
            unknown.append((layer, weight))
        else:
            mapping[(layer, weight)] = (name, group)
    return mapping, unknown


def _block_of(name: str, feature_extractor_name: str) -> int | None:
    """Index i of a `<fe>/blocks_<i>/...` tensor name, else None."""
    m = re.match(re.escape(feature_extractor_name) + r"/blocks_(\d+)/", name)
    return int(m.group(1)) if m else None


def ignore_reason(name: str, feature_extractor_name: str, *, restore_final_layer: bool = True,
                  backbone_only: bool = False) -> str | None:
    """Why a TF1 checkpoint tensor is deliberately not loaded, or None if it must be loaded.

    Args:
        name: TF1 tensor name, e.g. "decode/final_layer_weights/kernel/Adam".
        feature_extractor_name: the backbone scope of the model being filled.
        restore_final_layer: False for --do_not_restore_final_layer_weights.
        backbone_only: True to read only the `<fe>/` scope (an ImageNet EfficientNet checkpoint).
    Returns:
        One of the IGNORE_* reasons, or None.
    """
    parts = name.split("/")
    if parts[-1] in OPTIMIZER_SLOTS or _BETA_POWER.match(name):
        return IGNORE_OPTIMIZER
    if "ExponentialMovingAverage" in parts:
        return IGNORE_EMA
    if name == "global_step":
        return IGNORE_GLOBAL_STEP
    block = _block_of(name, feature_extractor_name)
    if block in UNUSED_BLOCKS.get(feature_extractor_name, ()):
        return IGNORE_UNUSED_BLOCK
    if backbone_only:
        if block in IMAGENET_ONLY_BLOCKS.get(feature_extractor_name, ()) or \
                name.startswith(f"{feature_extractor_name}/head/"):
            return IGNORE_IMAGENET_ONLY
        if name.startswith(f"{DECODER_SCOPE}/"):
            return IGNORE_DECODER
    if not restore_final_layer and name.startswith(f"{FINAL_LAYER_SCOPE}/"):
        return IGNORE_FINAL_LAYER
    return None


def describe_checkpoint(names: list[str]) -> dict[str, list]:
    """Summarize which architecture a TF1 checkpoint was written for, to make mismatch errors useful.

    Args:
        names: every tensor name in the checkpoint.
    Returns:
        {"feature_extractors": sorted backbone scopes, "rsd": sorted reductions with an RSD module}.
    """
    scopes = sorted({n.split("/")[0] for n in names if re.match(r"efficientnet-b\d/", n)})
    rsd = sorted({int(m.group(1)) + 1 for m in
                  (re.match(r"decode/decode_skip_connections_(\d+)/", n) for n in names) if m})
    return {"feature_extractors": scopes, "rsd": rsd}
