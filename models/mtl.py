"""Meta-transfer learning (Sun et al., CVPR 2019) layers and switches for the MTL U-Net
(ahirsharan/MTL-Segmentation models/mtl.py).

A scaling-and-shifting (SS) convolution keeps the pre-trained kernel W and bias b and learns a
scale Phi1 of shape (1, 1, in, out) (init 1), shared over the kernel window, and a per-output-
channel shift Phi2 (init 0): y = conv(x, W * Phi1) + (b + Phi2). As in the original
(ahirsharan/MTL-Segmentation models/mtl.py),
a conv without bias has no shift: the U-Net's 3x3 convs feed batch norm, which removes any
per-channel constant, so a shift there would get an identically zero gradient (Adam would turn
its round-off into steps). Which weights train is the layer's `mode`:
* "pre_train": W and b train, Phi1/Phi2 stay frozen (at 1/0 the layer is a plain convolution);
* "meta_transfer": W and b frozen, Phi1/Phi2 train. Batch norm and the head always train.
The mode is part of the layer config, so a saved `.keras` MTL U-Net comes back in its mode.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from models.layers import leaf_layers

MTL_MODES = ("pre_train", "meta_transfer")
HEAD_NAME = "final_layer_weights"
RNG_STATE = "seed_generator_state"  # dropout RNG states: per model, never transferred


class _ScaleShift:
    """Adds `ss_scale` / `ss_shift` to a Keras convolution and applies `mode` to trainability."""

    def _init_mode(self, mode: str) -> None:
        if mode not in MTL_MODES:
            raise ValueError(f"MTL mode must be one of {MTL_MODES}. Received: {mode!r}")
        self._mode = mode

    def _build_scale_shift(self, scale_shape) -> None:
        self.ss_scale = self.add_weight(name="ss_scale", shape=scale_shape, initializer="ones")
        self.ss_shift = self.add_weight(name="ss_shift", shape=(self.filters,),
                                        initializer="zeros") if self.use_bias else None
        self._apply_mode()

    @property
    def mode(self) -> str:
        """"pre_train" or "meta_transfer"."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._init_mode(value)
        if self.built:
            self._apply_mode()

    def _apply_mode(self) -> None:
        meta = self._mode == "meta_transfer"
        for v in self.base_weights():
            v.trainable = not meta
        for v in self.scale_shift_weights():
            v.trainable = meta

    def base_weights(self) -> list:
        """The pre-trained kernel (and bias, if any)."""
        return [self.kernel] + ([self.bias] if self.use_bias else [])

    def scale_shift_weights(self) -> list:
        """The scale (and shift, if the conv has a bias)."""
        return [self.ss_scale] + ([self.ss_shift] if self.use_bias else [])

    def _add_bias(self, outputs):
        if self.use_bias:
            outputs = outputs + ops.reshape(self.bias + self.ss_shift, (1, 1, 1, self.filters))
        return self.activation(outputs) if self.activation is not None else outputs

    def get_config(self):
        return {**super().get_config(), "mode": self._mode}

    # Keras' convolutions save only kernel and bias; keep the scale and shift in saved files too.
    def _own_variables(self) -> list:
        return self.base_weights() + self.scale_shift_weights()

    def save_own_variables(self, store):
        if self.built:
            for i, v in enumerate(self._own_variables()):
                store[str(i)] = v

    def load_own_variables(self, store):
        if not self.built:
            return
        own = self._own_variables()
        if len(store.keys()) != len(own):
            raise ValueError(f"Layer {self.name!r} expects {len(own)} saved variables "
                             f"({[v.name for v in own]}), the file has {len(store.keys())}.")
        for i, v in enumerate(own):
            v.assign(store[str(i)])


@keras.saving.register_keras_serializable(package="metaseg")
class ScaleShiftConv2D(_ScaleShift, layers.Conv2D):
    """Conv2D with MTL scaling and shifting: conv(x, W * ss_scale) + (b + ss_shift) (no bias: no
    shift).

    Args:
        mode: "pre_train" or "meta_transfer" (see the module docstring).
        **kwargs: keras.layers.Conv2D arguments (channels_last, groups 1).
    """

    def __init__(self, *args, mode: str = "meta_transfer", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mode(mode)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_scale_shift((1, 1, self.kernel.shape[2], self.filters))

    def call(self, inputs):
        return self._add_bias(self.convolution_op(inputs, self.kernel * self.ss_scale))


@keras.saving.register_keras_serializable(package="metaseg")
class ScaleShiftConv2DTranspose(_ScaleShift, layers.Conv2DTranspose):
    """Conv2DTranspose with MTL scaling and shifting; the kernel is (kh, kw, out, in), the scale
    (1, 1, out, in).

    Args:
        mode: "pre_train" or "meta_transfer".
        **kwargs: keras.layers.Conv2DTranspose arguments (channels_last).
    """

    def __init__(self, *args, mode: str = "meta_transfer", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mode(mode)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_scale_shift((1, 1, self.filters, self.kernel.shape[3]))

    def call(self, inputs):
        outputs = ops.conv_transpose(inputs, self.kernel * self.ss_scale,
                                     strides=list(self.strides), padding=self.padding,
                                     output_padding=self.output_padding,
                                     dilation_rate=self.dilation_rate,
                                     data_format=self.data_format)
        return self._add_bias(outputs)


def _ss_layers(model: keras.Model) -> list:
    found = [layer for layer in leaf_layers(model) if isinstance(layer, _ScaleShift)]
    if not found:
        raise ValueError(f"Model {model.name!r} has no scale-and-shift layers; MTL modes apply "
                         "to --model_name mtl_unet only.")
    return found


def set_mtl_mode(model: keras.Model, mode: str) -> None:
    """Switch an MTL U-Net between pre-training and meta-transfer training.

    "pre_train": base kernels/biases train, scale/shift frozen. "meta_transfer": base kernels and
    biases frozen; scale/shift, batch-norm gamma/beta and the head train. Rebuild any compiled
    step or optimizer afterwards: the trainable-variable list changes.

    Args:
        model: a model built with --model_name mtl_unet.
        mode: "pre_train" or "meta_transfer".
    Raises:
        ValueError: an unknown mode, or a model without scale-and-shift layers.
    """
    if mode not in MTL_MODES:
        raise ValueError(f"MTL mode must be one of {MTL_MODES}. Received: {mode!r}")
    for layer in _ss_layers(model):
        layer.mode = mode


def head_variables(model: keras.Model) -> list:
    """The head (`final_layer_weights`, the MTL base learner): [kernel, bias].

    Args:
        model: any model from models.build.build_model.
    Returns:
        [kernel, bias] variables.
    """
    head = model.get_layer(HEAD_NAME)
    return [head.kernel, head.bias]


def load_pretrained_unet(mtl_model: keras.Model, unet_model: keras.Model, *,
                         keep_head: bool = True) -> list[str]:
    """Copy a pre-trained plain U-Net into an MTL U-Net by layer name; reset scale 1, shift 0.

    Every weight of the U-Net (kernels, biases, batch-norm gamma/beta/moving statistics, the head)
    is copied into the same-named layer and weight of the target. Nothing is skipped silently: a
    U-Net weight without a counterpart, a shape mismatch, or an MTL base kernel/bias left without
    a source raises before anything is assigned (the seed silently dropped most kernels, spec
    7.3). With keep_head=False the head (`final_layer_weights`) is not copied: the target keeps
    its freshly initialized head, e.g. a `way`-channel head after a K-class pre-training.
    The target may also be a plain U-Net (then there is no scale/shift to reset).

    Args:
        mtl_model: target, built with --model_name mtl_unet (or unet).
        unet_model: source, built with --model_name unet and the same U-Net flags.
        keep_head: copy the head too (False: leave the target's head as initialized).
    Returns:
        the paths of the target's variables left as initialized (the head's, or []).
    Raises:
        ValueError: naming every missing layer/weight and every shape mismatch.
    """
    target = {layer.name: layer for layer in leaf_layers(mtl_model)}
    pairs, problems, filled = [], [], set()
    for layer in leaf_layers(unet_model):
        if not keep_head and layer.name == HEAD_NAME:
            continue
        for w in layer.weights:
            if w.name == RNG_STATE:
                continue
            other = target.get(layer.name)
            match = [v for v in (other.weights if other is not None else []) if v.name == w.name]
            if not match:
                problems.append(f"{w.path}: no layer/weight {layer.name}/{w.name} in the MTL U-Net")
            elif tuple(match[0].shape) != tuple(w.shape):
                problems.append(f"{w.path}: shape {tuple(w.shape)} in the U-Net vs "
                                f"{tuple(match[0].shape)} in the MTL U-Net")
            else:
                pairs.append((match[0], w))
                filled.add(id(match[0]))
    ss = [layer for layer in leaf_layers(mtl_model) if isinstance(layer, _ScaleShift)]
    problems += [f"{v.path}: MTL base weight with no U-Net source" for layer in ss
                 for v in layer.base_weights() if id(v) not in filled]
    if problems:
        raise ValueError("The pre-trained U-Net does not match the MTL U-Net (build both with the "
                         "same --n_unet_encoding_stacks / --start_num_feature_maps_power / "
                         "--image_size):\n  " + "\n  ".join(problems))
    for dst, src in pairs:
        dst.assign(src)
    for layer in ss:
        layer.ss_scale.assign(ops.ones_like(layer.ss_scale))
        if layer.use_bias:
            layer.ss_shift.assign(ops.zeros_like(layer.ss_shift))
    return [] if keep_head else [v.path for v in head_variables(mtl_model)]
