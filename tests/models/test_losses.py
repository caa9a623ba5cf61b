"""Losses, regularizers and the IoU metric, each against a second (numpy or Keras) computation."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models.build import build_model
from models.config import LOSS_NAMES, LossConfig, ModelConfig
from models.losses import make_loss
from models.mtl import set_mtl_mode
from models.regularizers import regularized_weights

EPS = 1e-7


@pytest.fixture(scope="module")
def tiny_unet():
    return build_model(ModelConfig(model_name="unet", image_size=32, n_unet_encoding_stacks=1,
                                   start_num_feature_maps_power=1))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 32, 32)) < 0.35).astype(np.int32)
    masks[2] = 0  # an image without foreground
    logits = rng.normal(size=(3, 32, 32, 2)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return np.eye(2, dtype="float32")[masks], probs


def _np_soft_iou(y, p):
    inter = (p[..., 1] * y[..., 1]).sum((1, 2))
    union = p[..., 1].sum((1, 2)) + y[..., 1].sum((1, 2)) - inter
    return ((inter + EPS) / (union + EPS)).mean()


def _np_ce(y, p, smoothing=0.0):
    y = y * (1 - smoothing) + smoothing / 2
    return -(y * np.log(np.clip(p, EPS, 1))).sum(-1)


def _np_lovasz_hinge(y, p):
    """Berman et al.'s binary Lovasz hinge, per image, written with numpy sorting."""
    out = []
    for yi, pi in zip(y, p):
        logit = (np.log(np.clip(pi[..., 1], EPS, 1)) - np.log(np.clip(pi[..., 0], EPS, 1))).ravel()
        gt = yi[..., 1].ravel()
        errors = 1 - logit * (2 * gt - 1)
        order = np.argsort(-errors, kind="stable")
        e, g = errors[order], gt[order]
        inter = g.sum() - np.cumsum(g)
        union = g.sum() + np.cumsum(1 - g)
        jac = 1 - inter / union
        jac[1:] = jac[1:] - jac[:-1]
        out.append(np.dot(np.maximum(e, 0), jac))
    return np.mean(out)


def _value(name, y, p, model, **kw):
    return float(make_loss(LossConfig(loss_name=name, **kw), model)(y, p))


def test_each_loss_matches_its_definition(batch, tiny_unet):
    y, p = batch
    ce = _np_ce(y, p).mean()
    iou = _np_soft_iou(y, p)
    dice = 2 * iou / (iou + 1)
    focal = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0, reduction=None)
    expected = {"cross_entropy": ce, "bce_dice": ce - np.log(dice), "soft_iou": 1 - iou,
                "dice": 1 - dice, "ce_dice": ce + 1 - dice,
                "focal": float(np.mean(focal(y, p))), "lovasz": _np_lovasz_hinge(y, p)}
    assert set(expected) == set(LOSS_NAMES)
    for name, value in expected.items():
        assert _value(name, y, p, tiny_unet) == pytest.approx(value, rel=1e-4), name
    smoothed = _np_ce(y, p, 0.1).mean()
    assert _value("cross_entropy", y, p, tiny_unet, label_smoothing=0.1) == \
        pytest.approx(smoothed, rel=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_is_zero_for_a_perfect_prediction_positive_otherwise_and_differentiable(
        name, batch, tiny_unet):
    y, p = batch
    assert _value(name, y, y, tiny_unet) == pytest.approx(0.0, abs=1e-6)
    assert _value(name, y, p, tiny_unet) > 0.01
    logits = tf.Variable(np.log(p))
    with tf.GradientTape() as tape:
        loss = make_loss(LossConfig(loss_name=name), tiny_unet)(y, tf.nn.softmax(logits))
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    # a small step against the gradient lowers the loss
    after = make_loss(LossConfig(loss_name=name), tiny_unet)(y, tf.nn.softmax(logits - 1e-2 * grad
                                                                              / np.abs(grad).max()))
    assert float(after) < float(loss)


def test_l2_and_l1_cover_kernels_and_biases_but_not_batch_norm(batch, tiny_unet):
    y, p = batch
    weights = regularized_weights(tiny_unet)
    names = {w.path for w in weights}
    assert "final_layer_weights/kernel" in names and "final_layer_weights/bias" in names
    assert "up1_transpose/bias" in names and "enc1_conv1/kernel" in names
    assert not any("bn" in n.split("/")[0] for n in names)
    base = _value("cross_entropy", y, p, tiny_unet)
    l2 = sum(float(np.sum(np.square(w))) for w in weights) / 2 * 0.0005
    l1 = sum(float(np.sum(np.abs(w))) for w in weights) * 0.0005
    assert _value("cross_entropy", y, p, tiny_unet, l2=True) == pytest.approx(base + l2, rel=1e-5)
    assert _value("cross_entropy", y, p, tiny_unet, l1=True) == pytest.approx(base + l1, rel=1e-5)
    gamma = tiny_unet.get_layer("enc1_bn1").gamma
    saved = gamma.numpy()
    gamma.assign(saved * 7.0)  # batch norm is not decayed
    try:
        assert _value("cross_entropy", y, p, tiny_unet, l2=True) == pytest.approx(base + l2,
                                                                                  rel=1e-5)
    finally:
        gamma.assign(saved)


def test_darc1(batch, tiny_unet):
    y, p = batch
    log_p = np.log(p)
    centred = log_p - log_p.mean(-1, keepdims=True)
    darc1 = np.abs(centred).sum(0).max() * 0.0005
    base = _value("cross_entropy", y, p, tiny_unet)
    assert _value("cross_entropy", y, p, tiny_unet, darc1=True) == pytest.approx(base + darc1,
                                                                                 rel=1e-5)


def test_regularizers_follow_the_mtl_mode():
    model = build_model(ModelConfig(model_name="mtl_unet", image_size=32, n_unet_encoding_stacks=1,
                                    start_num_feature_maps_power=1))
    set_mtl_mode(model, "pre_train")
    assert "enc1_conv1/kernel" in {w.path for w in regularized_weights(model)}
    set_mtl_mode(model, "meta_transfer")
    names = {w.path for w in regularized_weights(model)}
    assert names == {"final_layer_weights/kernel", "final_layer_weights/bias"}


CE_LOSSES = ("cross_entropy", "bce_dice", "ce_dice", "focal")


@pytest.mark.parametrize("name", CE_LOSSES)
def test_cross_entropy_terms_have_the_logits_gradient(name, tiny_unet):
    """A pixel whose logits favour the wrong class by 30 gets d loss / d logit = p - y ~ -1.

    Its true-class probability is e^-30 ~ 1e-13: a log of probabilities clipped at 1e-7 would give
    it no gradient at all. The other pixels are ordinary; the mean over N pixels scales by 1/N.
    """
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    labels = (rng.random((2, 4, 4)) < 0.5).astype(np.int32)
    labels[0, 1, 2] = 0
    logits[0, 1, 2] = (0.0, 30.0)  # background pixel, foreground logit ahead by 30
    y = tf.constant(np.eye(2, dtype="float32")[labels])
    z = tf.Variable(logits)
    loss = make_loss(LossConfig(loss_name=name), tiny_unet)
    with tf.GradientTape() as tape:
        value = loss(y, keras.activations.softmax(z))
    grad = tape.gradient(value, z).numpy() * labels.size  # undo the mean over pixels
    assert grad[0, 1, 2, 0] == pytest.approx(-1.0, abs=1e-3)
    assert grad[0, 1, 2, 1] == pytest.approx(1.0, abs=1e-3)
    if name == "cross_entropy":  # everywhere the softmax CE's own gradient p - y
        p = tf.nn.softmax(logits).numpy()
        np.testing.assert_allclose(grad, p - y.numpy(), atol=1e-5)
        assert float(value) == pytest.approx(float(tf.reduce_mean(
            tf.nn.softmax_cross_entropy_with_logits(y, logits))), rel=1e-5)


def test_cross_entropy_values_unchanged_on_ordinary_inputs(batch, tiny_unet):
    """Against the clipped-log formula the values agree to 1e-5 where no probability is clipped."""
    y, p = batch
    assert p.min() > 1e-6
    for name, clipped in (("cross_entropy", _np_ce(y, p).mean()),
                          ("focal", np.mean((1 - np.exp(-_np_ce(y, p))) ** 2 * _np_ce(y, p)))):
        assert _value(name, y, p, tiny_unet) == pytest.approx(clipped, abs=1e-5)
