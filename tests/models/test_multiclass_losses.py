"""Multi-class losses against direct numpy computations, with unlabelled (255) pixels removed."""
import numpy as np
import pytest

from models import multiclass_losses as ml

K = 4


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 6, K)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, K - 1, size=(2, 6, 6))  # class K-1 never present
    labels[rng.random((2, 6, 6)) < 0.3] = 255
    return labels, p.astype(np.float32)


def _labelled(labels, p):
    keep = labels.reshape(-1) != 255
    return labels.reshape(-1)[keep], p.reshape(-1, K)[keep].astype(np.float64)


def _ce(y, p):
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))


def _lovasz_numpy(y, p):
    losses = []
    for c in range(K):
        fg = (y == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        e, g = errors[order], fg[order]
        jaccard = 1 - (g.sum() - np.cumsum(g)) / (g.sum() + np.cumsum(1 - g))
        grad = np.diff(jaccard, prepend=0.0)
        losses.append(float(e @ grad))
    return np.mean(losses)


def test_cross_entropy_focal_and_dice_match_numpy(batch):
    labels, p = batch
    y, q = _labelled(labels, p)
    ce = _ce(y, q)
    np.testing.assert_allclose(float(ml.cross_entropy(labels, p)), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(ml.focal(labels, p)),
                               np.mean((1 - np.exp(-ce)) ** 2 * ce), rtol=1e-5)
    t = np.eye(K)[y]
    expected_dice = 1 - (2 * (q * t).sum() + 1) / (q.sum() + t.sum() + 1)
    np.testing.assert_allclose(float(ml.dice(labels, p)), expected_dice, rtol=1e-5)
    np.testing.assert_allclose(float(ml.multiclass_loss("ce_dice", labels, p)),
                               ce.mean() + expected_dice, rtol=1e-5)
    smoothed = -(((np.eye(K)[y]) * 0.9 + 0.1 / K) * np.log(np.clip(q, 1e-7, 1))).sum(-1).mean()
    np.testing.assert_allclose(float(ml.cross_entropy(labels, p, 0.1)), smoothed, rtol=1e-5)


def test_lovasz_softmax_matches_numpy_over_present_classes(batch):
    labels, p = batch
    y, q = _labelled(labels, p)
    np.testing.assert_allclose(float(ml.lovasz_softmax(labels, p)), _lovasz_numpy(y, q),
                               rtol=1e-5)


def test_unlabelled_pixels_change_nothing(batch):
    labels, p = batch
    other = p.copy()
    other[labels == 255] = np.eye(K, dtype=np.float32)[K - 1]  # confident, "wrong" everywhere
    for name in ml.MULTICLASS_LOSSES:
        np.testing.assert_allclose(float(ml.multiclass_loss(name, labels, p)),
                                   float(ml.multiclass_loss(name, labels, other)), rtol=1e-5,
                                   err_msg=name)


def test_perfect_prediction_costs_nothing_and_all_ignored_is_zero():
    labels = np.array([[[0, 1], [2, 255]]])
    p = np.eye(3, dtype=np.float32)[np.where(labels == 255, 0, labels)]
    for name in ("cross_entropy", "focal", "lovasz"):
        assert float(ml.multiclass_loss(name, labels, p)) == pytest.approx(0.0, abs=1e-5)
    ignored = np.full((1, 2, 2), 255)
    for name in ml.MULTICLASS_LOSSES:
        assert np.isfinite(float(ml.multiclass_loss(name, ignored, p)))


def test_losses_without_multiclass_form_are_refused():
    from models.config import LossConfig
    with pytest.raises(ValueError, match="bce_dice"):
        ml.make_multiclass_loss(LossConfig(loss_name="bce_dice"), None)
