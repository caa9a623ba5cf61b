"""The paper's augmentation: each transform against numpy / scipy renderings of the original
(ml4ai/mliis augmenters/np_augmenters.py) with the same parameters, the original's parameter
ranges, image-mask alignment through the whole pipeline; the inner step's use of it is in
tests/meta/test_inner_augmentation.py."""
import numpy as np
import pytest
import tensorflow as tf

from data import paper_augment as pa

ndimage = pytest.importorskip("scipy.ndimage")

H, W = 20, 27  # not square, so a swapped axis shows


def pair(n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, H, W, 3)).astype(np.float32)
    masks = (rng.uniform(size=(n, H, W)) < 0.4).astype(np.float32)
    return images, masks


def tensors(*arrays, dtype=None):
    return [tf.constant(a, dtype) if dtype else tf.constant(a) for a in arrays]


def numpy_of(outputs):
    return [o.numpy() for o in outputs]


def test_random_erase_matches_the_original():
    images, masks = pair()
    # Boxes inside, clipped at the right/bottom border, and of zero height.
    top, left, height, width = [2, 15, 5], [3, 20, 0], [6, 9, 0], [10, 12, 4]
    value = np.float32([17.5, 200.0, 99.0])
    out_images, out_masks = numpy_of(pa.random_erase(
        *tensors(images, masks), *tensors(top, left, height, width, dtype=tf.int32),
        tf.constant(value)))
    for i in range(3):
        image, mask = images[i].copy(), masks[i].copy()
        image[top[i]:top[i] + height[i], left[i]:left[i] + width[i], :] = value[i]
        mask[top[i]:top[i] + height[i], left[i]:left[i] + width[i]] = 0  # background
        np.testing.assert_array_equal(out_images[i], image)
        np.testing.assert_array_equal(out_masks[i], mask)


def test_translate_rolls_and_fills_the_band_that_wraps_around():
    images, masks = pair(4)
    vertical, shift, roll = [True, True, False, False], [5, -23, 1, -7], [False, True, False, True]
    fill = np.float32([[10, 20, 30], [1, 2, 3], [250, 0, 128], [4, 5, 6]])
    out_images, out_masks = numpy_of(pa.translate(
        *tensors(images, masks), tf.constant(vertical), tf.constant(shift, tf.int32),
        tf.constant(roll), tf.constant(fill)))
    for i in range(4):
        axis = 0 if vertical[i] else 1
        image = np.roll(images[i], shift[i], axis)
        mask = np.roll(masks[i], shift[i], axis)
        if not roll[i]:
            band = [slice(None), slice(None)]
            band[axis] = slice(0, shift[i]) if shift[i] > 0 else slice(shift[i], None)
            image[tuple(band)] = fill[i]
            mask[tuple(band)] = 0
        np.testing.assert_array_equal(out_images[i], image)
        np.testing.assert_array_equal(out_masks[i], mask)
    # The original's fill mode rolled rows but painted the leading columns, so the rows that
    # wrapped around survived; here they are gone.
    wrapped_rows = np.roll(images[0], shift[0], 0)[:shift[0]]
    assert not np.any(np.all(out_images[0][:shift[0]] == wrapped_rows, axis=-1))


def test_flip_noise_and_exposure_match_the_original():
    images, masks = pair()
    flipped = numpy_of(pa.fliplr(*tensors(images, masks)))
    np.testing.assert_array_equal(flipped[0], images[:, :, ::-1])
    np.testing.assert_array_equal(flipped[1], masks[:, :, ::-1])
    images[0, :4] = 0.0
    images[1, :4] = 255.0  # clipping at both ends
    rng = np.random.default_rng(1)
    for noise in (rng.normal(0, 30, images.shape), rng.normal(0, 40, (3, 1, 1, 1))):
        noise = noise.astype(np.float32)
        out_images, out_masks = numpy_of(pa.add_and_clip(*tensors(images, masks, noise)))
        np.testing.assert_allclose(out_images, np.clip(images + noise, 0, 255), atol=1e-4)
        np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize("angle", [-33, 17, 44])
def test_rotation_matches_scipy_in_every_border_mode(angle):
    images, masks = pair(4, seed=angle + 100)
    modes = [pa.REFLECT, pa.CONSTANT, pa.MIRROR, pa.WRAP]
    cval = np.float32(77.0)
    fill = np.full(images.shape, cval, np.float32)
    out_images, out_masks = numpy_of(pa.rotate(
        *tensors(images, masks), tf.constant([float(angle)] * 4), tf.constant(modes, tf.int32),
        tf.constant(fill)))
    for i, mode in enumerate(pa.ROTATION_MODES):
        scipy_mode = "grid-wrap" if mode == "wrap" else mode  # the period-n tiling
        # The original's calls, with a bilinear image instead of its cubic spline.
        image = ndimage.rotate(images[i].astype(np.float64), angle, reshape=False, order=1,
                               mode=scipy_mode, cval=float(cval))
        mask = ndimage.rotate(masks[i], angle, reshape=False, order=0, mode=scipy_mode, cval=0)
        np.testing.assert_allclose(out_images[i], image, atol=0.05, err_msg=mode)
        np.testing.assert_array_equal(out_masks[i], mask, err_msg=mode)
    assert np.all(out_images[1][out_masks[1] == 0] >= 0)  # no sentinel leaks


def test_rotation_noise_fill_is_the_originals_sentinel_rule():
    images, masks = pair(1, seed=5)
    noise = np.random.default_rng(2).integers(0, 256, images.shape).astype(np.float32)
    out_images, out_masks = numpy_of(pa.rotate(
        *tensors(images, masks), tf.constant([-40.0]), tf.constant([pa.CONSTANT]),
        tf.constant(noise)))
    image = ndimage.rotate(images[0].astype(np.float64), -40, reshape=False, order=1,
                           mode="constant", cval=-256)
    outside = image == -256
    image[outside] = noise[0][outside]
    np.testing.assert_allclose(out_images[0], image, atol=0.05)
    assert outside.any() and np.all(out_masks[0][outside[..., 0]] == 0)


def test_parameters_follow_the_originals_ranges():
    n, side = 4000, 64
    p = {k: v.numpy() for k, v in pa.draw_parameters(tf.constant([3, 4]), n, side, side).items()}
    area = p["erase_height"] * p["erase_width"] / side ** 2
    assert area.min() > 0.015 and area.max() <= 0.10
    assert p["erase_top"].min() == 0 and p["erase_top"].max() == side - 1
    assert 0 <= p["erase_value"].min() and p["erase_value"].max() <= 255
    shift = np.abs(p["shift"])
    assert shift.min() == 1 and shift.max() == pa.MAX_TRANSLATE
    assert 0.45 < (p["shift"] > 0).mean() < 0.55 and 0.45 < p["roll"].mean() < 0.55
    assert 0.45 < p["vertical"].mean() < 0.55
    assert abs(p["noise_sigma"].mean() - 5.1) < 0.1
    assert abs(p["exposure"].std() - 12.75) < 0.6
    angles = p["angle"]
    assert np.all(angles == np.round(angles)) and angles.min() == -45 and angles.max() == 44
    np.testing.assert_allclose(np.bincount(p["mode"]) / n, 0.25, atol=0.03)
    assert p["cval"].min() == 0 and p["cval"].max() == 255
    assert 0.45 < p["noise_fill"].mean() < 0.55


def test_schedule_shuffles_the_six_and_keeps_one_to_six_of_them():
    n = 6000
    which = pa.transform_schedule(tf.constant([7, 8]), n, tf.constant(0.5)).numpy()
    applied = which != pa.IDENTITY
    count = applied.sum(axis=1)
    augmented = count > 0
    assert 0.47 < augmented.mean() < 0.53
    # The applied transforms are a prefix of the row, with no transform twice.
    assert np.all(applied == (np.arange(6)[None, :] < count[:, None]))
    full = which[count == 6]
    assert np.all(np.sort(full, axis=1) == np.arange(6))
    np.testing.assert_allclose(np.bincount(count[augmented], minlength=7)[1:] / augmented.sum(),
                               1 / 6, atol=0.025)
    for t in range(6):  # each transform is in an augmented example's list with p = 7/12
        included = np.any(which[augmented] == t, axis=1).mean()
        assert abs(included - 7 / 12) < 0.03
    first = which[augmented, 0]
    np.testing.assert_allclose(np.bincount(first, minlength=6) / augmented.sum(), 1 / 6,
                               atol=0.025)


def ellipse_batch(n=12, side=40):
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    rng = np.random.default_rng(3)
    masks = np.zeros((n, side, side), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(10, side - 10, size=2)
        masks[i] = ((xx - cx) / 9) ** 2 + ((yy - cy) / 6) ** 2 < 1
    return masks


def boundary(mask):
    """Pixels whose 3x3 neighbourhood holds both mask values, and the frame."""
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(mask, 1, mode="edge"), (3, 3))
    edge = windows.min(axis=(-1, -2)) != windows.max(axis=(-1, -2))
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    return edge


def test_image_and_mask_stay_aligned_through_the_pipeline():
    masks = ellipse_batch()
    white = np.repeat(255.0 * masks[..., None], 3, axis=-1).astype(np.float32)
    black = np.zeros_like(white)
    seed, rate = tf.constant([11, 12]), tf.constant(1.0)
    out_white, out_masks = numpy_of(pa.paper_augment_batch(*tensors(white, masks), rate, seed))
    out_black, again = numpy_of(pa.paper_augment_batch(*tensors(black, masks), rate, seed))
    np.testing.assert_array_equal(out_masks, again)
    assert set(np.unique(out_masks)) <= {0.0, 1.0}
    # Fills, erased boxes and noise do not depend on the content, so the difference of the two
    # outputs is the moved object alone: it must sit where the mask says.
    drawn = (out_white - out_black).mean(axis=-1) > 127.5
    changed = 0
    for i in range(len(masks)):
        mask = out_masks[i] > 0.5
        assert np.all((drawn[i] == mask) | boundary(mask)), f"example {i}"
        changed += not np.array_equal(out_masks[i], masks[i])
    assert changed >= len(masks) // 2
    same = numpy_of(pa.paper_augment_batch(*tensors(white, masks), rate, seed))
    np.testing.assert_array_equal(same[0], out_white)
    other = pa.paper_augment_batch(*tensors(white, masks), rate, tf.constant([11, 13]))
    assert not np.array_equal(other[0].numpy(), out_white)


def test_rate_zero_returns_the_batch_unchanged():
    images, masks = pair(6)
    out = numpy_of(pa.paper_augment_batch(*tensors(images, masks), tf.constant(0.0),
                                          tf.constant([1, 2])))
    np.testing.assert_array_equal(out[0], images)
    np.testing.assert_array_equal(out[1], masks)
