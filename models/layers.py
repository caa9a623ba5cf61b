"""Small custom layers shared by EfficientLab and the U-Nets, and the head's dropout-rate switch.

* `ResizeBilinear`: bilinear resize to a fixed size, with TF1's `align_corners=True` sampling
  (the reference's decoder upsampling and final resize), written as two gathers in keras.ops, or
  half-pixel centres (`keras.ops.image.resize`) with `align_corners=False`.
* `VariableDropout`: dropout whose rate is a non-trainable variable read at call time. Every
  adaptation sets it (`meta.inner`, from its `dropout_rate`; `dropout_rate_variables`) without
  rebuilding the model or retracing a compiled step; in the reference the rate was a placeholder
  with a default.
* `TrainingBatchNormalization`: batch norm that always uses batch statistics (the reference's
  `--skip_decoding` path, whose BN is in training mode even at prediction).
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

HEAD_DROPOUT_NAME = "final_dropout"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of RGB / 255; both networks normalize their own input
IMAGENET_STD = (0.229, 0.224, 0.225)


def _interpolation(in_size: int, out_size: int, align_corners: bool):
    """Source indices (lower, upper) and weights of the upper neighbour for one axis."""
    out = np.arange(out_size, dtype=np.float64)
    if align_corners:  # TF1: corners of input and output grids coincide
        src = out * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(out)
    else:  # half-pixel centres, clamped at the border (TF2 / keras.ops.image.resize)
        src = np.clip((out + 0.5) * (in_size / out_size) - 0.5, 0.0, in_size - 1)
    lower = np.floor(src).astype(np.int32)
    upper = np.minimum(lower + 1, in_size - 1).astype(np.int32)
    return lower, upper, (src - lower).astype(np.float32)


@keras.saving.register_keras_serializable(package="metaseg")
class ResizeBilinear(layers.Layer):
    """Bilinear resize of (N, H, W, C) maps to a fixed (height, width).

    Args:
        size: (height, width) of the output.
        align_corners: True samples like TF1 `resize_bilinear(align_corners=True)` (the reference);
            False uses half-pixel centres (`keras.ops.image.resize`).
    """

    def __init__(self, size, align_corners: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]))
        self.align_corners = bool(align_corners)

    def _resize_axis(self, x, axis: int, in_size: int, out_size: int):
        lower, upper, frac = _interpolation(in_size, out_size, self.align_corners)
        shape = [1, 1, 1, 1]
        shape[axis] = out_size
        frac = ops.reshape(ops.convert_to_tensor(frac, dtype=x.dtype), shape)
        low = ops.take(x, lower, axis=axis)
        high = ops.take(x, upper, axis=axis)
        return low + (high - low) * frac

    def call(self, inputs):
        in_h, in_w = inputs.shape[1], inputs.shape[2]
        if (in_h, in_w) == self.size:  # TF1 returns the input unchanged at equal sizes
            return inputs
        if not self.align_corners:
            return ops.image.resize(inputs, self.size, interpolation="bilinear")
        x = inputs
        if in_h != self.size[0]:
            x = self._resize_axis(x, 1, in_h, self.size[0])
        if in_w != self.size[1]:
            x = self._resize_axis(x, 2, in_w, self.size[1])
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "align_corners": self.align_corners}


@keras.saving.register_keras_serializable(package="metaseg")
class VariableDropout(layers.Layer):
    """Element-wise dropout whose rate lives in a non-trainable variable (`rate`).

    Args:
        rate: initial drop probability in [0, 1).
        seed: optional seed of the layer's own random stream.
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        _check_rate(rate)
        self.initial_rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.rate = self.add_weight(name="rate", shape=(), trainable=False,
                                    initializer=keras.initializers.Constant(self.initial_rate))

    def call(self, inputs, training=None):
        if not training:
            return inputs
        rate = ops.cast(self.rate, inputs.dtype)
        noise = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator,
                                     dtype=inputs.dtype)
        # rate 0 keeps every unit (noise >= 0) and divides by 1: exactly the identity
        return ops.where(noise >= rate, inputs / (1.0 - rate), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.initial_rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="metaseg")
class TrainingBatchNormalization(layers.BatchNormalization):
    """BatchNormalization that normalizes with batch statistics at training and prediction alike."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=True, mask=mask)


def _check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float, np.floating)) and 0.0 <= float(rate) < 1.0
            and math.isfinite(float(rate))):
        raise ValueError(f"The dropout rate (--final_layer_dropout_rate) must be in [0, 1). "
                         f"Received: {rate!r}")


def leaf_layers(model: keras.Model):
    """Every layer of a model that is not itself a model, descending into nested models.

    Args:
        model: a Keras model.
    Returns:
        a list of layers in model order.
    """
    out = []
    for layer in model.layers:
        out.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def dropout_rate_variables(model: keras.Model) -> list:
    """The rate variables of the model's VariableDropout layers ([] for a model without one).

    Args:
        model: a Keras model.
    Returns:
        the non-trainable rate variables; assigning one changes the rate of the next call.
    """
    return [layer.rate for layer in leaf_layers(model) if isinstance(layer, VariableDropout)]


def set_dropout_rate(model: keras.Model, rate: float) -> None:
    """Set the head dropout rate of a built model; compiled steps see it without retracing.

    Args:
        model: a model from `models.build.build_model`.
        rate: drop probability in [0, 1).
    Raises:
        ValueError: a rate outside [0, 1), or a model without a VariableDropout layer.
    """
    _check_rate(rate)
    variables = dropout_rate_variables(model)
    if not variables:
        raise ValueError(f"Model {model.name!r} has no VariableDropout layer "
                         f"({HEAD_DROPOUT_NAME!r}); build it with models.build.build_model.")
    for variable in variables:
        variable.assign(float(rate))


def segmentation_head(x, cfg, kernel_initializer="glorot_uniform"):
    """The shared head: variable-rate dropout, 1x1 conv, resize to the input, softmax.

    Args:
        x: decoder features (N, h, w, C).
        cfg: ModelConfig (image_size, align_corners, num_classes).
        kernel_initializer: of the 1x1 conv `final_layer_weights` (its bias starts at 0).
    Returns:
        float32 (N, S, S, num_classes) probabilities; with 2 channels, 0 is background and 1
        foreground; K channels for multi-class pre-training.
    """
    x = VariableDropout(0.0, name=HEAD_DROPOUT_NAME)(x)  # every adaptation sets its rate
    x = layers.Conv2D(cfg.num_classes, 1, kernel_initializer=kernel_initializer,
                      name="final_layer_weights")(x)
    x = ResizeBilinear((cfg.image_size, cfg.image_size), align_corners=cfg.align_corners,
                       name="logits_resize")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)
