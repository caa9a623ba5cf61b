"""Segmentation losses on the model's 2-channel softmax output, plus the --l2/--l1/--darc1 terms.

All losses take y_true one-hot float32 (N, S, S, 2) and y_pred = the model's probabilities, and
return a scalar. Every cross-entropy term takes its log-probabilities from `exact_log`, whose
gradient through the model's softmax is the logits' one, p - y, as the reference's softmax
cross-entropy on logits (ml4ai/mliis models/efficientlab.py); a log of clipped probabilities
would give a pixel whose true-class probability is below the clip no gradient at all. The soft
IoU is the reference's: per image on the foreground channel, eps 1e-7, mean over the batch;
Dice = 2 IoU / (IoU + 1).
"""
from __future__ import annotations

import keras
from keras import ops

from models.config import LossConfig
from models.regularizers import regularization

EPSILON = 1e-7
# MTL-Segmentation's focal loss (ahirsharan/MTL-Segmentation utils/losses.py): gamma 2, no alpha
FOCAL_GAMMA = 2.0


# Floor of the exact log: below any probability an ordinary pixel gets, above float32's
# denormals (1.2e-38), so 1 / p stays finite for upstream gradients up to ~1e3.
TINY = 1e-35


def _log_probabilities(y_pred):
    return ops.log(ops.clip(y_pred, EPSILON, 1.0))


@ops.custom_gradient
def exact_log(p):
    """log p with the gradient 1 / p, floored at the smallest normal float32 instead of clipped.

    Chained through the softmax's backward pass, (g - sum(g p)) p, the upstream -y / p gives the
    logits exactly p - y wherever p >= TINY, i.e. for logit gaps up to ~80; a clip at
    1e-7 would zero that gradient from a gap of ~16 on. Values are the true log-probabilities
    down to the same floor, so a perfect prediction still costs 0 and nothing is infinite.

    Args:
        p: probabilities in [0, 1].
    Returns:
        log(max(p, TINY)).
    """
    floored = ops.maximum(p, TINY)

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return upstream / floored

    return ops.log(floored), grad


def pixel_cross_entropy(y_true, y_pred, label_smoothing: float = 0.0):
    """Per-pixel 2-class cross-entropy with labels smoothed to y (1 - e) + e / 2.

    Args:
        y_true: one-hot (N, S, S, 2).
        y_pred: probabilities (N, S, S, 2).
        label_smoothing: e in [0, 1).
    Returns:
        (N, S, S) cross-entropies.
    """
    y = y_true * (1.0 - label_smoothing) + label_smoothing / 2.0
    return -ops.sum(y * exact_log(y_pred), axis=-1)


def soft_iou(y_true, y_pred):
    """Batch mean of the per-image soft IoU of the foreground channel (eps 1e-7).

    Args:
        y_true: one-hot (N, S, S, 2).
        y_pred: probabilities (N, S, S, 2).
    Returns:
        scalar in (0, 1].
    """
    p, y = y_pred[..., 1], y_true[..., 1]
    intersection = ops.sum(p * y, axis=(1, 2))
    union = ops.sum(p, axis=(1, 2)) + ops.sum(y, axis=(1, 2)) - intersection
    return ops.mean((intersection + EPSILON) / (union + EPSILON))


def soft_dice(y_true, y_pred):
    """Dice from the soft IoU: 2 IoU / (IoU + 1) (the reference's `bce_dice` term).

    Args:
        y_true: one-hot (N, S, S, 2).
        y_pred: probabilities (N, S, S, 2).
    Returns:
        scalar in (0, 1].
    """
    iou = soft_iou(y_true, y_pred)
    return 2.0 * iou / (iou + 1.0)


def lovasz_hinge(y_true, y_pred):
    """Binary Lovasz hinge (Berman et al., CVPR 2018) per image, mean over the batch.

    The logit of a pixel is log p1 - log p0 (its softmax logit difference); errors 1 - logit * sign
    are sorted in decreasing order and weighted by the gradient of the Lovasz extension of the
    Jaccard loss at the sorted ground truth.

    Args:
        y_true: one-hot (N, S, S, 2).
        y_pred: probabilities (N, S, S, 2).
    Returns:
        scalar >= 0.
    """
    log_p = _log_probabilities(y_pred)
    pixels = y_pred.shape[1] * y_pred.shape[2]  # static: the image size is fixed per model
    logits = ops.reshape(log_p[..., 1] - log_p[..., 0], (-1, pixels))
    labels = ops.reshape(y_true[..., 1], (-1, pixels))
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, order = ops.top_k(errors, k=pixels, sorted=True)
    gt_sorted = ops.take_along_axis(labels, order, axis=1)
    positives = ops.sum(gt_sorted, axis=1, keepdims=True)
    intersection = positives - ops.cumsum(gt_sorted, axis=1)
    union = positives + ops.cumsum(1.0 - gt_sorted, axis=1)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return ops.mean(ops.sum(ops.relu(errors_sorted) * ops.stop_gradient(grad), axis=1))


def segmentation_loss(cfg: LossConfig, y_true, y_pred):
    """The data term selected by --loss_name (the reference only asked whether the name contains
    "dice": CE - ln(Dice) if so, else plain CE).

    `cross_entropy`: mean pixel CE; `bce_dice`: CE - ln(Dice) (the paper's); `soft_iou`: 1 - soft
    IoU; `dice`: 1 - Dice; `ce_dice`: CE + (1 - Dice); `focal`: mean (1 - p_t)^2 CE;
    `lovasz`: binary Lovasz hinge. Label smoothing applies to every CE term.

    Args:
        cfg: loss config.
        y_true: one-hot (N, S, S, 2).
        y_pred: probabilities (N, S, S, 2).
    Returns:
        scalar.
    """
    name = cfg.loss_name
    if name in ("soft_iou", "dice", "lovasz"):
        return {"soft_iou": lambda: 1.0 - soft_iou(y_true, y_pred),
                "dice": lambda: 1.0 - soft_dice(y_true, y_pred),
                "lovasz": lambda: lovasz_hinge(y_true, y_pred)}[name]()
    ce = pixel_cross_entropy(y_true, y_pred, cfg.label_smoothing)
    if name == "focal":
        return ops.mean((1.0 - ops.exp(-ce)) ** FOCAL_GAMMA * ce)
    ce = ops.mean(ce)
    if name == "bce_dice":
        return ce - ops.log(soft_dice(y_true, y_pred))
    if name == "ce_dice":
        return ce + 1.0 - soft_dice(y_true, y_pred)
    assert name == "cross_entropy", name  # LossConfig validated the name
    return ce


def make_loss(cfg: LossConfig, model: keras.Model):
    """The training objective: the --loss_name term plus the --l2/--l1/--darc1 regularizers.

    The regularizers read the model's trainable kernels when the loss is called (traced), so a
    later `set_mtl_mode` is respected by a loss made before it.

    Args:
        cfg: loss config.
        model: the model whose weights the regularizers act on.
    Returns:
        fn(y_true one-hot float32 (N, S, S, 2), y_pred probabilities (N, S, S, 2)) -> scalar.
    """
    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        return segmentation_loss(cfg, y_true, y_pred) + regularization(cfg, model, y_pred)

    return loss
