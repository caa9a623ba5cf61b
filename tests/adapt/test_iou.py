"""adapt.iou against hand-computed values."""
import numpy as np
import pytest

from adapt import iou


def test_iou_per_image_hand_computed():
    pred = np.zeros((3, 4, 4), bool)
    gt = np.zeros((3, 4, 4), np.uint8)
    pred[0, :2, :2] = True          # 4 px
    gt[0, :2, :] = 1                # 8 px, overlap 4 -> 4/8
    gt[1, 0, 0] = 1                 # empty prediction, 1 gt px -> 0
    # image 2: both empty -> (0 + eps)/(0 + eps) = 1
    got = iou.iou_per_image(pred, gt)
    np.testing.assert_allclose(got, [0.5, 0.0, 1.0], atol=1e-6)
    inter, union = iou.intersections_unions(pred, gt)
    assert inter.tolist() == [4, 0, 0] and union.tolist() == [8, 1, 0]


def test_foreground_thresholds_channel_one():
    probs = np.zeros((1, 2, 2, 2), np.float32)
    probs[0, :, :, 1] = [[0.2, 0.51], [0.5, 0.9]]
    probs[..., 0] = 1 - probs[..., 1]
    assert iou.foreground(probs)[0].tolist() == [[False, True], [False, True]]


def test_confidence_interval_is_196_population_std_over_sqrt_n():
    values = [0.5, 0.7, 0.9, 0.3]
    std = np.sqrt(np.mean((np.array(values) - 0.6) ** 2))  # population std by hand
    assert iou.confidence_interval_95(values) == pytest.approx(1.96 * std / 2.0)
    assert iou.confidence_interval_95([0.4]) == 0.0


def test_class_accumulated_iou_sums_before_dividing():
    per_class = {"a": [(1, 2), (9, 10)],   # mean of per-image IoUs would be 0.7; accumulated 10/12
                 "b": [(0, 4)],
                 "c": [(0, 0)]}            # nothing to find, nothing predicted -> 1
    assert iou.class_accumulated_iou(per_class) == pytest.approx((10 / 12 + 0 + 1) / 3)


def test_iou_per_image_thresholds_the_foreground_probability():
    y = np.zeros((3, 8, 8), np.int32)
    y[0, :4] = 1
    y[1, :, :2] = 1
    p = np.zeros((3, 8, 8, 2), np.float32)
    p[..., 1] = 0.2
    p[0, :2, :, 1] = 0.9  # 16 of 32 foreground pixels, nothing else
    p[1, :, :4, 1] = 0.51  # 16 of 32 predicted, covering all 16 true ones
    p[2, 0, 0, 1] = 0.5  # exactly 0.5 is background: empty prediction of an empty mask scores 1
    p[..., 0] = 1 - p[..., 1]
    expected = np.array([16 / 32, 16 / 32, 1.0])
    np.testing.assert_allclose(iou.iou_per_image(iou.foreground(p), y), expected, rtol=1e-6)
    np.testing.assert_allclose(iou.iou_per_image(iou.foreground(p[..., 1]), y), expected,
                               rtol=1e-6)
    assert float(np.mean(iou.iou_per_image(iou.foreground(p), y))) == \
        pytest.approx(expected.mean())
