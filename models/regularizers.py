"""Weight and activation regularizers added to the loss (--l2, --l1, --darc1; ml4ai/mliis
models/regularizers.py).

The weight terms cover every trainable kernel and bias of a layer that is not batch norm (the
reference: trainable variables whose name lacks `batch_normalization`), read when the loss is
traced, so only what currently trains is decayed (e.g. the MTL scale/shift are not kernels and are
left alone: decaying a scale initialized at 1 towards 0 would fight the method).
"""
from __future__ import annotations

import keras
from keras import layers, ops

from models.config import LossConfig
from models.layers import leaf_layers

REGULARIZATION_WEIGHT = 0.0005  # the reference's fixed coefficient for all three terms
KERNEL_NAMES = ("kernel", "bias", "depthwise_kernel")


def regularized_weights(model: keras.Model) -> list:
    """The trainable kernels/biases the --l2 and --l1 terms act on (batch norm excluded).

    Args:
        model: any Keras model.
    Returns:
        list of variables.
    """
    out = []
    for layer in leaf_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            continue
        out.extend(v for v in layer.trainable_weights if v.name in KERNEL_NAMES)
    return out


def darc1(y_pred):
    """DARC1 (Kawaguchi et al.): max over pixels and channels of the batch sum of |logit|.

    Only probabilities reach the loss; logits are recovered up to a per-pixel constant, and we use
    the centred ones (log p minus its mean over the 2 channels), the smallest such representative.

    Args:
        y_pred: probabilities (N, S, S, 2).
    Returns:
        scalar >= 0 (not yet weighted).
    """
    log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
    logits = log_p - ops.mean(log_p, axis=-1, keepdims=True)
    return ops.max(ops.sum(ops.abs(logits), axis=0))


def regularization(cfg: LossConfig, model: keras.Model, y_pred):
    """0.0005 x (L2 = sum of squares / 2, L1 = sum of |w|, DARC1) for the flags that are on.

    Args:
        cfg: loss config (l2, l1, darc1).
        model: the model whose weights are regularized.
        y_pred: the model's probabilities (for DARC1).
    Returns:
        scalar (0.0 when no flag is on).
    """
    total = ops.convert_to_tensor(0.0)
    if cfg.l2 or cfg.l1:
        weights = regularized_weights(model)
        if cfg.l2:
            l2 = sum(ops.sum(ops.square(w)) for w in weights) / 2.0
            total = total + l2 * REGULARIZATION_WEIGHT
        if cfg.l1:
            total = total + sum(ops.sum(ops.abs(w)) for w in weights) * REGULARIZATION_WEIGHT
    if cfg.darc1:
        total = total + darc1(y_pred) * REGULARIZATION_WEIGHT
    return total
