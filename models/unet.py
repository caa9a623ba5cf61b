"""U-Net and MTL U-Net (ahirsharan/MTL-Segmentation models/unet_mtl.py), with EfficientLab's input
normalization and head.

Stack k (1..n) has 2**(p + k - 1) channels (p = --start_num_feature_maps_power); the bottleneck
has twice the deepest stack's. Each double conv is (3x3 conv without bias -> BN -> ReLU) x 2; down
is a 2x2 max pool, up a 2x2 stride-2 transposed conv (with bias) to the skip's width, concatenated
as [skip, up]. The head is EfficientLab's (dropout, 1x1 conv with bias, softmax).
The MTL U-Net has the same layer names, with every conv and transposed conv replaced by its
scale-and-shift version (models/mtl.py), so a pre-trained U-Net maps onto it by name.
"""
from __future__ import annotations

import keras
from keras import layers

from models.config import ModelConfig
from models.layers import IMAGENET_MEAN, IMAGENET_STD, segmentation_head
from models.mtl import ScaleShiftConv2D, ScaleShiftConv2DTranspose


def imagenet_normalization(x):
    """(x / 255 - mean) / std per RGB channel, as one variable-free Rescaling layer.

    Args:
        x: RGB in [0, 255].
    Returns:
        the normalized tensor.
    """
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    return layers.Rescaling(scale, offset, name="input_normalization")(x)


def _double_conv(x, filters: int, name: str, conv):
    for j in (1, 2):
        # no bias: batch norm's beta is the per-channel offset (as MTL-Segmentation's U-Net)
        x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{j}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{j}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{j}")(x)
    return x


def build_unet(cfg: ModelConfig, mtl: bool = False) -> keras.Model:
    """A U-Net (or MTL U-Net) with the shared 2-channel softmax head.

    Args:
        cfg: model config (image_size, n_unet_encoding_stacks, start_num_feature_maps_power).
        mtl: build scale-and-shift convolutions (--model_name mtl_unet), in "meta_transfer" mode.
    Returns:
        keras.Model "unet" / "mtl_unet": (None, S, S, 3) in [0, 255] -> (None, S, S, 2) softmax.
    """
    conv = ScaleShiftConv2D if mtl else layers.Conv2D
    transpose = ScaleShiftConv2DTranspose if mtl else layers.Conv2DTranspose
    widths = [2 ** (cfg.start_num_feature_maps_power + k)
              for k in range(cfg.n_unet_encoding_stacks)]
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = imagenet_normalization(inputs)
    skips = []
    for k, width in enumerate(widths, start=1):
        x = _double_conv(x, width, f"enc{k}", conv)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{k}_pool")(x)
    x = _double_conv(x, 2 * widths[-1], "mid", conv)
    for k in range(len(widths), 0, -1):
        up = transpose(widths[k - 1], 2, strides=2, name=f"up{k}_transpose")(x)
        x = layers.Concatenate(name=f"up{k}_concat")([skips[k - 1], up])
        x = _double_conv(x, widths[k - 1], f"dec{k}", conv)
    outputs = segmentation_head(x, cfg)
    return keras.Model(inputs, outputs, name="mtl_unet" if mtl else "unet")
