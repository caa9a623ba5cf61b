"""The paper's augmentation (ml4ai/mliis augmenters/np_augmenters.py), in-graph and stateless.

Per example, with probability `aug_rate`: shuffle the six transforms, draw k uniform in 1..6 and
apply the first k in the shuffled order. The transforms and their parameter ranges are the
original's:

* random erase: area U(0.02, 0.10) of the image, aspect U(0.3, 1/0.3), top-left corner uniform
  over the image (the box is clipped at the border), one value U(0, 255) for all channels; the
  mask is background there;
* translate: shift 1..23 px along rows or columns, either way; half the time a circular roll,
  otherwise the band that wraps around is filled (image: a colour U(0, 255) per channel; mask:
  background). The original rolled one axis and filled a band of the other, so the wrapped
  content stayed and an unrelated band was painted over; here the wrapped band is filled;
* horizontal flip;
* additive Gaussian noise: per-pixel N(0, sigma), sigma = |N(5.1, 1)|, clipped to [0, 255];
* exposure: one N(0, sigma) added to the whole image, sigma = |N(12.75, 1)|, clipped;
* rotation by an integer angle in [-45, 44] degrees about the centre, border mode uniform over
  reflect / constant / mirror / wrap (scipy.ndimage's definitions; wrap is the period-n tiling,
  scipy's "grid-wrap"). Constant borders are half the time a constant 0..255, else per-pixel
  integer noise 0..255; the mask is background there. Image: bilinear (the original used scipy's
  cubic spline); mask: nearest, so it stays exactly {0, 1}. Not clipped (as the original).

Each transform is applied at most once per example, so every per-example parameter is drawn once
for the whole batch; per-pixel noise is drawn where it is used. All randomness is
`tf.random.stateless_*` keyed by the `seed` tensor: new seeds and rates are new tensor values, not
new traces. Images are float32 (N, H, W, 3) in [0, 255]; masks float32 (N, H, W) in {0, 1}.
"""
from __future__ import annotations

import math

import tensorflow as tf

# The original's transform list (cur_aug_funcs) order; position in it is the transform's id.
ERASE, TRANSLATE, FLIP, NOISE, EXPOSURE, ROTATE = range(6)
NUM_TRANSFORMS = 6
IDENTITY = NUM_TRANSFORMS  # the partition of examples left alone at a position

ERASE_AREA = (0.02, 0.10)
ERASE_ASPECT = (0.3, 1 / 0.3)
MAX_TRANSLATE = 23
NOISE_SIGMA_MEAN = 5.1
EXPOSURE_SIGMA_MEAN = 12.75
MAX_ROTATION = 45
# Rotation border modes, in the original's list order.
REFLECT, CONSTANT, MIRROR, WRAP = range(4)
ROTATION_MODES = ("reflect", "constant", "mirror", "wrap")


# --- the transforms, on a batch with explicit per-example parameters ---------------------------
def random_erase(images, masks, top, left, height, width, value):
    """Fill the box [top, top + height) x [left, left + width) with `value`; mask background.

    Args:
        images: float32 (n, H, W, 3); masks: float32 (n, H, W).
        top, left, height, width: int32 (n,) box (clipped at the image border).
        value: float32 (n,) fill of all three channels.
    """
    shape = tf.shape(masks)
    rows = tf.range(shape[1])[None, :, None]
    cols = tf.range(shape[2])[None, None, :]
    top, left = top[:, None, None], left[:, None, None]
    inside = ((rows >= top) & (rows < top + height[:, None, None])
              & (cols >= left) & (cols < left + width[:, None, None]))
    images = tf.where(inside[..., None], value[:, None, None, None], images)
    return images, tf.where(inside, 0.0, masks)


def translate(images, masks, vertical, shift, roll, fill):
    """np.roll by `shift` along rows (vertical) or columns; without `roll`, fill the wrapped band.

    Args:
        images: float32 (n, H, W, 3); masks: float32 (n, H, W).
        vertical: bool (n,) roll the rows (else the columns).
        shift: int32 (n,) signed shift (positive = down / right).
        roll: bool (n,) keep the wrapped-around content (else fill it).
        fill: float32 (n, 3) colour of the filled band; the mask is background there.
    """
    shape = tf.shape(masks)
    n, h, w = shape[0], shape[1], shape[2]
    rows = tf.range(h)[None, :, None] - tf.where(vertical, shift, 0)[:, None, None]
    cols = tf.range(w)[None, None, :] - tf.where(vertical, 0, shift)[:, None, None]
    rows, cols = tf.broadcast_to(rows, [n, h, w]), tf.broadcast_to(cols, [n, h, w])
    wrapped = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
    filled = wrapped & ~roll[:, None, None]
    batch = tf.broadcast_to(tf.range(n)[:, None, None], [n, h, w])
    index = tf.stack([batch, tf.math.floormod(rows, h), tf.math.floormod(cols, w)], axis=-1)
    images = tf.where(filled[..., None], fill[:, None, None, :], tf.gather_nd(images, index))
    return images, tf.where(filled, 0.0, tf.gather_nd(masks, index))


def fliplr(images, masks):
    """Mirror the width axis of image and mask."""
    return tf.reverse(images, axis=[2]), tf.reverse(masks, axis=[2])


def add_and_clip(images, masks, noise):
    """Add `noise` and clip to [0, 255]: Gaussian noise (n, H, W, 3), exposure (n, 1, 1, 1)."""
    return tf.clip_by_value(images + noise, 0.0, 255.0), masks


def _border_index(index, size, mode):
    """Integer sample positions outside [0, size) mapped back in (mode broadcasts to index)."""
    period = 2 * size
    reflected = tf.math.floormod(index, period)
    reflected = tf.where(reflected < size, reflected, period - 1 - reflected)
    period = tf.maximum(2 * size - 2, 1)
    mirrored = tf.math.floormod(index, period)
    mirrored = tf.where(mirrored < size, mirrored, period - mirrored)
    wrapped = tf.math.floormod(index, size)
    clamped = tf.clip_by_value(index, 0, size - 1)  # constant: outside samples are masked later
    return tf.where(mode == REFLECT, reflected, tf.where(
        mode == MIRROR, mirrored, tf.where(mode == WRAP, wrapped, clamped)))


def rotate(images, masks, angle, mode, fill):
    """scipy.ndimage.rotate(reshape=False) of image (bilinear) and mask (nearest), per example.

    Args:
        images: float32 (n, H, W, 3); masks: float32 (n, H, W).
        angle: float32 (n,) degrees, in scipy.ndimage.rotate's sense.
        mode: int32 (n,) REFLECT | CONSTANT | MIRROR | WRAP.
        fill: float32 (n, H, W, 3) image value where a constant-mode output samples outside the
            input; the mask is background there.
    """
    shape = tf.shape(masks)
    n, h, w = shape[0], shape[1], shape[2]
    theta = angle * (math.pi / 180.0)
    cos, sin = tf.cos(theta)[:, None, None], tf.sin(theta)[:, None, None]
    cy, cx = tf.cast(h - 1, tf.float32) / 2.0, tf.cast(w - 1, tf.float32) / 2.0
    dy = tf.cast(tf.range(h), tf.float32)[None, :, None] - cy
    dx = tf.cast(tf.range(w), tf.float32)[None, None, :] - cx
    # Output pixel -> input position, as scipy's rotate builds its affine_transform matrix.
    y = cos * dy + sin * dx + cy
    x = -sin * dy + cos * dx + cx
    batch = tf.broadcast_to(tf.range(n)[:, None, None], [n, h, w])

    def sample(source, yi, xi):
        return tf.gather_nd(source, tf.stack([batch, yi, xi], -1))

    y0, x0 = tf.floor(y), tf.floor(x)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    # The bilinear neighbours and the nearest sample, mapped into the image in one go each.
    per_example = mode[None, :, None, None]
    rows = _border_index(tf.stack([y0, y0 + 1, tf.cast(tf.floor(y + 0.5), tf.int32)]), h,
                         per_example)
    cols = _border_index(tf.stack([x0, x0 + 1, tf.cast(tf.floor(x + 0.5), tf.int32)]), w,
                         per_example)
    top = (1.0 - fx) * sample(images, rows[0], cols[0]) + fx * sample(images, rows[0], cols[1])
    bottom = (1.0 - fx) * sample(images, rows[1], cols[0]) + fx * sample(images, rows[1], cols[1])
    rotated = (1.0 - fy) * top + fy * bottom
    nearest = sample(masks, rows[2], cols[2])
    # scipy's constant mode: an output whose position lies outside [0, size - 1] is the fill.
    outside = ((y < 0.0) | (y > tf.cast(h - 1, tf.float32))
               | (x < 0.0) | (x > tf.cast(w - 1, tf.float32))) & (mode == CONSTANT)[:, None, None]
    return tf.where(outside[..., None], fill, rotated), tf.where(outside, 0.0, nearest)


# --- the random parameters and the pipeline -----------------------------------------------------
def draw_parameters(seed, n, h, w):
    """Every per-example parameter of every transform (each is used at most once per example).

    Args:
        seed: int32 (2,) stateless key.
        n, h, w: batch size, image height and width.

    Returns:
        dict of (n,) tensors (translate_fill: (n, 3)), named as the transforms' arguments.
    """
    uniform_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    u = tf.unstack(tf.random.stateless_uniform([16, n], uniform_seed))  # one U[0, 1) row each
    z = tf.unstack(tf.random.stateless_normal([3, n], normal_seed))

    def integers(row, low, high):  # uniform in low..high - 1
        return tf.cast(tf.floor(tf.cast(low, tf.float32)
                                + row * tf.cast(high - low, tf.float32)), tf.int32)

    area = (ERASE_AREA[0] + u[0] * (ERASE_AREA[1] - ERASE_AREA[0])) * tf.cast(h * w, tf.float32)
    aspect = ERASE_ASPECT[0] + u[1] * (ERASE_ASPECT[1] - ERASE_ASPECT[0])
    exposure_sigma = tf.abs(EXPOSURE_SIGMA_MEAN + z[1])
    return {
        "erase_height": tf.cast(tf.floor(tf.sqrt(area * aspect)), tf.int32),
        "erase_width": tf.cast(tf.floor(tf.sqrt(area / aspect)), tf.int32),
        "erase_top": integers(u[2], 0, h),
        "erase_left": integers(u[3], 0, w),
        "erase_value": 255.0 * u[4],
        "vertical": u[5] < 0.5,
        "roll": u[6] < 0.5,
        "shift": tf.where(u[7] < 0.5, 1, -1) * integers(u[8], 1, MAX_TRANSLATE + 1),
        "translate_fill": 255.0 * tf.stack(u[9:12], axis=1),
        "angle": tf.cast(integers(u[12], -MAX_ROTATION, MAX_ROTATION), tf.float32),
        "mode": integers(u[13], 0, len(ROTATION_MODES)),
        "cval": tf.floor(256.0 * u[14]),
        "noise_fill": u[15] < 0.5,
        "noise_sigma": tf.abs(NOISE_SIGMA_MEAN + z[0]),
        "exposure": z[2] * exposure_sigma,
    }


# The parameters each transform reads (gathered for the examples it is applied to).
_USES = {ERASE: ("erase_top", "erase_left", "erase_height", "erase_width", "erase_value"),
         TRANSLATE: ("vertical", "shift", "roll", "translate_fill"), FLIP: (),
         NOISE: ("noise_sigma",), EXPOSURE: ("exposure",),
         ROTATE: ("angle", "mode", "noise_fill", "cval")}


def _apply(transform, images, masks, p, seed):
    """One transform on the examples gathered for it (p: their parameters)."""
    if transform == ERASE:
        return random_erase(images, masks, *(p[k] for k in _USES[ERASE]))
    if transform == TRANSLATE:
        return translate(images, masks, *(p[k] for k in _USES[TRANSLATE]))
    if transform == FLIP:
        return fliplr(images, masks)
    if transform == NOISE:
        noise = tf.random.stateless_normal(tf.shape(images), seed)
        return add_and_clip(images, masks, noise * p["noise_sigma"][:, None, None, None])
    if transform == EXPOSURE:
        return add_and_clip(images, masks, p["exposure"][:, None, None, None])
    noise = tf.cast(tf.random.stateless_uniform(tf.shape(images), seed, 0, 256, dtype=tf.int32),
                    tf.float32)
    fill = tf.where(p["noise_fill"][:, None, None, None], noise, p["cval"][:, None, None, None])
    return rotate(images, masks, p["angle"], p["mode"], fill)


def transform_schedule(seed, n, aug_rate):
    """Which transform each example gets at each position of its shuffled list.

    Args:
        seed: int32 (2,) stateless key.
        n: batch size.
        aug_rate: probability that an example is augmented.

    Returns:
        int32 (n, 6): row i is a permutation of the transform ids whose first k_i entries are
        kept, k_i uniform in 1..6, and the rest IDENTITY; all IDENTITY for an example that is not
        augmented.
    """
    u = tf.random.stateless_uniform([n, NUM_TRANSFORMS + 2], seed)
    augment = u[:, 0] < aug_rate
    order = tf.argsort(u[:, 2:], axis=1)
    count = 1 + tf.cast(tf.floor(u[:, 1] * NUM_TRANSFORMS), tf.int32)  # 1..6
    applied = augment[:, None] & (tf.range(NUM_TRANSFORMS)[None, :] < count[:, None])
    return tf.where(applied, order, IDENTITY)


# Plain Python control flow only: autograph's source rewrite would cost seconds per trace.
@tf.autograph.experimental.do_not_convert
def paper_augment_batch(images: tf.Tensor, masks: tf.Tensor, aug_rate: tf.Tensor,
                        seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The original's augmenter on a batch (see the module docstring); same contract as
    `data.augment.augment_batch`.

    Args:
        images: float32 (N, H, W, 3) in [0, 255].
        masks: float32 (N, H, W) in {0, 1}.
        aug_rate: scalar float tensor in [0, 1]: probability that an example is augmented.
        seed: int32 (2,) tensor; the stateless RNG key (same seed -> same output).

    Returns:
        (images float32 (N, H, W, 3), masks float32 (N, H, W) in {0, 1}); examples that are not
        augmented are returned unchanged.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    masks = tf.convert_to_tensor(masks, tf.float32)
    aug_rate = tf.convert_to_tensor(aug_rate, tf.float32)
    parameter_seed, schedule_seed, pixel_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.convert_to_tensor(seed, tf.int32), num=3))
    shape = tf.shape(masks)
    n, h, w = shape[0], shape[1], shape[2]
    params = draw_parameters(parameter_seed, n, h, w)
    which = transform_schedule(schedule_seed, n, aug_rate)
    examples = tf.range(n)

    def position(j, x, m):
        ids = tf.dynamic_partition(examples, which[:, j], NUM_TRANSFORMS + 1)
        xs = tf.dynamic_partition(x, which[:, j], NUM_TRANSFORMS + 1)
        ms = tf.dynamic_partition(m, which[:, j], NUM_TRANSFORMS + 1)
        for t in range(NUM_TRANSFORMS):
            part = {k: tf.gather(params[k], ids[t]) for k in _USES[t]}
            key = tf.random.experimental.stateless_fold_in(pixel_seed, j * NUM_TRANSFORMS + t)
            xs[t], ms[t] = _apply(t, xs[t], ms[t], part, key)
        x = tf.dynamic_stitch(ids, xs)
        m = tf.dynamic_stitch(ids, ms)
        return j + 1, tf.ensure_shape(x, images.shape), tf.ensure_shape(m, masks.shape)

    _, out_images, out_masks = tf.while_loop(
        lambda j, x, m: j < NUM_TRANSFORMS, position, (tf.constant(0), images, masks))
    return out_images, out_masks
