"""Compute precision and XLA: --mixed_precision and --jit_compile, resolved once per run.

Mixed precision is Keras' global dtype policy (`mixed_bfloat16` / `mixed_float16`): layers
compute in the low dtype while their variables stay float32, so the inner optimizer, the
snapshots, the directions and the meta-update all work on float32 weights. The loss is taken in
float32 (meta.inner casts the network's output). float16 has too few exponent bits for small
gradients, so its loss is scaled by LOSS_SCALE_FLOAT16 (static; a step whose gradients overflow
is skipped).
"""
from __future__ import annotations

import keras
import tensorflow as tf

LOSS_SCALE_FLOAT16 = 2.0**12
_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def set_precision(mode: str) -> float | None:
    """Set Keras' global dtype policy (before the model is built); return the loss scale.

    Args:
        mode: none | bfloat16 | float16.

    Returns:
        the loss scale the inner loop must use (None: no scaling).
    """
    if mode not in _POLICIES:
        raise ValueError(f"--mixed_precision must be one of {tuple(_POLICIES)}. Received: {mode!r}")
    keras.mixed_precision.set_global_policy(_POLICIES[mode])
    return LOSS_SCALE_FLOAT16 if mode == "float16" else None


def use_jit(mode: str) -> bool:
    """--jit_compile: auto is on when TensorFlow sees a GPU, off on CPU."""
    if mode == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return mode == "on"
