"""Batch augmentation in pure TF, for use inside the compiled inner-loop step.

The reference augments in numpy per example (ml4ai/mliis augmenters/np_augmenters.py); that would
force a host round
trip per mini-batch, so we do one stateless-random TF pass over the whole batch instead:

* with probability `aug_rate` an example is augmented, otherwise it passes through bit-exactly;
* an augmented example gets one affine warp, shared by image and mask: horizontal flip (p = 0.5),
  rotation U(-MAX_ROTATION_DEG, +MAX_ROTATION_DEG), isotropic scale U(SCALE_RANGE) and shift
  U(-MAX_SHIFT, +MAX_SHIFT) of the side. Image: bilinear; mask: nearest, so it stays exactly {0,1}.
  Both use REFLECT filling so the border content of image and mask still agree;
* then colour jitter on the image only (brightness, contrast, saturation), clipped to [0, 255].

All randomness is `tf.random.stateless_*` keyed by the `seed` tensor, so the same seed gives the
same batch and new seeds/rates are new tensor values, not new traces.
"""
from __future__ import annotations

import math

import tensorflow as tf

MAX_ROTATION_DEG = 30.0
SCALE_RANGE = (0.8, 1.2)
MAX_SHIFT = 0.1            # fraction of the image side
MAX_BRIGHTNESS = 25.0      # additive, in 0..255 units
CONTRAST_RANGE = (0.75, 1.25)
SATURATION_RANGE = (0.7, 1.3)
_LUMA = (0.299, 0.587, 0.114)


def _affine_transforms(seeds: tf.Tensor, n: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                       augment: tf.Tensor) -> tf.Tensor:
    """Per-example output->input maps as the (n, 8) vectors ImageProjectiveTransformV3 expects."""
    flip = tf.random.stateless_uniform([n], seeds[1]) < 0.5
    theta = tf.random.stateless_uniform([n], seeds[2], -1.0, 1.0) * (MAX_ROTATION_DEG * math.pi / 180.0)
    scale = tf.random.stateless_uniform([n], seeds[3], *SCALE_RANGE)
    shift = tf.random.stateless_uniform([n, 2], seeds[4], -MAX_SHIFT, MAX_SHIFT)
    # Non-augmented examples get the identity: no flip, no rotation, scale 1, no shift.
    flip = tf.logical_and(flip, augment)
    aug = tf.cast(augment, tf.float32)
    theta, scale = theta * aug, 1.0 + (scale - 1.0) * aug
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    tx, ty = shift[:, 0] * w * aug, shift[:, 1] * h * aug
    # Forward map about the pixel-grid centre c: p_out = c + t + s R(theta) F (p_in - c).
    # Inverse (what the op wants): p_in = c + A (p_out - c - t), A = F R(-theta) / s.
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    f = tf.where(flip, -1.0, 1.0)
    a00, a01 = f * cos, f * sin
    a10, a11 = -sin, cos
    ox, oy = cx + tx, cy + ty
    a02 = cx - a00 * ox - a01 * oy
    a12 = cy - a10 * ox - a11 * oy
    zeros = tf.zeros_like(a00)
    return tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


def _colour_jitter(images: tf.Tensor, seeds: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], seeds[5], -MAX_BRIGHTNESS, MAX_BRIGHTNESS)
    contrast = tf.random.stateless_uniform([n, 1, 1, 1], seeds[6], *CONTRAST_RANGE)
    saturation = tf.random.stateless_uniform([n, 1, 1, 1], seeds[7], *SATURATION_RANGE)
    grey = tf.reduce_sum(images * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)
    images = grey + saturation * (images - grey)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = mean + contrast * (images - mean) + brightness
    return tf.clip_by_value(images, 0.0, 255.0)


def augment_batch(images: tf.Tensor, masks: tf.Tensor, aug_rate: tf.Tensor,
                  seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly flip/rotate/scale/shift image+mask together and colour-jitter the image.

    Args:
        images: float32 (N, S, S, 3) in [0, 255].
        masks: float32 (N, S, S) in {0, 1}.
        aug_rate: scalar float tensor in [0, 1]: probability that an example is augmented.
        seed: int32 (2,) tensor; the stateless RNG key (same seed -> same output).

    Returns:
        (images float32 (N,S,S,3) in [0,255], masks float32 (N,S,S) in {0,1}); examples that are
        not augmented are returned unchanged.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    masks = tf.convert_to_tensor(masks, tf.float32)
    aug_rate = tf.convert_to_tensor(aug_rate, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed, tf.int32), num=8)
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]

    augment = tf.random.stateless_uniform([n], seeds[0]) < aug_rate
    transforms = _affine_transforms(seeds, n, height, width, augment)
    output_shape = tf.stack([height, width])
    warped_images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=output_shape,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    warped_masks = tf.raw_ops.ImageProjectiveTransformV3(
        images=masks[..., None], transforms=transforms, output_shape=output_shape,
        fill_value=0.0, interpolation="NEAREST", fill_mode="REFLECT")[..., 0]
    jittered = _colour_jitter(warped_images, seeds, n)

    keep = tf.reshape(augment, [-1, 1, 1])
    out_images = tf.where(keep[..., None], jittered, images)
    out_masks = tf.where(keep, warped_masks, masks)
    return out_images, out_masks
