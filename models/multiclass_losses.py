"""K-class segmentation losses for pre-training on a multi-class dataset (COCO / COCO-Stuff).

Every loss takes integer labels (N, S, S) with IGNORE_LABEL (255) marking unlabelled pixels, and
the model's K-channel softmax probabilities (N, S, S, K); unlabelled pixels count nowhere (not in
a mean, a sum, a sort, nor in which classes are present). Definitions follow MTL-Segmentation's
`utils/losses.py` / `utils/lovasz_losses.py` (ahirsharan/MTL-Segmentation):
* cross_entropy: mean -log p[label] over labelled pixels (labels optionally smoothed);
* dice: 1 - (2 sum(P T) + 1) / (sum P + sum T + 1), one-hot T, over all classes and labelled
  pixels together (smooth 1);
* ce_dice: cross_entropy + dice (the seed zeroed its Dice term; here it counts);
* focal: mean (1 - p_t)^2 CE over labelled pixels (gamma 2, no alpha);
* lovasz: Lovasz-Softmax (Berman et al., CVPR 2018), over the whole batch, averaged over the
  classes present among the labelled pixels.
Log-probabilities come from probabilities clipped to [1e-7, 1], as in models/losses.py.
"""
from __future__ import annotations

import keras
from keras import ops

from models.config import LossConfig
from models.regularizers import regularization

IGNORE_LABEL = 255
EPSILON = 1e-7
FOCAL_GAMMA = 2.0
MULTICLASS_LOSSES = ("cross_entropy", "dice", "ce_dice", "focal", "lovasz")


def _flatten(labels, probabilities):
    """(P,) int labels, (P, K) probabilities, (P,) float 1 for labelled pixels, (P, K) one-hot."""
    k = probabilities.shape[-1]
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    probabilities = ops.reshape(ops.cast(probabilities, "float32"), (-1, k))
    valid = ops.cast(ops.not_equal(labels, IGNORE_LABEL), "float32")
    # An ignored pixel gets the all-zero one-hot row (class 255 is out of range).
    one_hot = ops.one_hot(ops.where(labels == IGNORE_LABEL, k, labels), k + 1)[:, :k]
    return labels, probabilities, valid, one_hot


def _pixel_cross_entropy(one_hot, probabilities, valid, label_smoothing: float):
    k = probabilities.shape[-1]
    target = one_hot * (1.0 - label_smoothing) + label_smoothing / k
    log_p = ops.log(ops.clip(probabilities, EPSILON, 1.0))
    return -ops.sum(target * log_p, axis=-1) * valid


def _mean_over(values, valid):
    return ops.sum(values) / ops.maximum(ops.sum(valid), 1.0)


def cross_entropy(labels, probabilities, label_smoothing: float = 0.0):
    """Mean pixel cross-entropy over labelled pixels.

    Args:
        labels: int (N, S, S) in 0..K-1 or 255.
        probabilities: (N, S, S, K) softmax.
        label_smoothing: e: targets y (1 - e) + e / K.
    Returns:
        scalar (0 when no pixel is labelled).
    """
    _, p, valid, one_hot = _flatten(labels, probabilities)
    return _mean_over(_pixel_cross_entropy(one_hot, p, valid, label_smoothing), valid)


def dice(labels, probabilities):
    """1 - (2 sum(P T) + 1) / (sum P + sum T + 1) over all classes and labelled pixels.

    Args:
        labels: int (N, S, S) in 0..K-1 or 255.
        probabilities: (N, S, S, K) softmax.
    Returns:
        scalar in [0, 1).
    """
    _, p, valid, one_hot = _flatten(labels, probabilities)
    p = p * valid[:, None]
    intersection = ops.sum(p * one_hot)
    return 1.0 - (2.0 * intersection + 1.0) / (ops.sum(p) + ops.sum(one_hot) + 1.0)


def focal(labels, probabilities, label_smoothing: float = 0.0):
    """Mean (1 - p_t)^2 CE over labelled pixels, p_t = exp(-CE).

    Args:
        labels: int (N, S, S) in 0..K-1 or 255.
        probabilities: (N, S, S, K) softmax.
        label_smoothing: of the CE term.
    Returns:
        scalar >= 0.
    """
    _, p, valid, one_hot = _flatten(labels, probabilities)
    ce = _pixel_cross_entropy(one_hot, p, valid, label_smoothing)
    return _mean_over((1.0 - ops.exp(-ce)) ** FOCAL_GAMMA * ce * valid, valid)


def lovasz_softmax(labels, probabilities):
    """Multi-class Lovasz-Softmax over the batch, mean over the classes present.

    Per class c: errors |1[y = c] - p_c| of the labelled pixels sorted in decreasing order, dotted
    with the gradient of the Lovasz extension of the Jaccard loss at the sorted ground truth.
    Unlabelled pixels get error 0 and ground truth 0: they sort after every pixel with a positive
    error and add 0 themselves, so the loss equals the one computed without them.

    Args:
        labels: int (N, S, S) in 0..K-1 or 255.
        probabilities: (N, S, S, K) softmax.
    Returns:
        scalar >= 0 (0 when no pixel is labelled).
    """
    _, p, valid, one_hot = _flatten(labels, probabilities)
    gt = ops.transpose(one_hot)  # (K, P)
    errors = ops.abs(gt - ops.transpose(p)) * valid[None, :]
    order = ops.argsort(-errors, axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    gt_sorted = ops.take_along_axis(gt, order, axis=-1)
    positives = ops.sum(gt_sorted, axis=-1, keepdims=True)
    intersection = positives - ops.cumsum(gt_sorted, axis=-1)
    union = ops.maximum(positives + ops.cumsum(1.0 - gt_sorted, axis=-1), 1.0)
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    per_class = ops.sum(errors_sorted * ops.stop_gradient(grad), axis=-1)
    present = ops.cast(positives[:, 0] > 0, "float32")
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


def multiclass_loss(name: str, labels, probabilities, label_smoothing: float = 0.0):
    """The data term selected by --loss_name for K-class labels.

    Args:
        name: one of MULTICLASS_LOSSES.
        labels: int (N, S, S) in 0..K-1 or 255.
        probabilities: (N, S, S, K) softmax.
        label_smoothing: of the CE terms.
    Returns:
        scalar.
    """
    if name == "cross_entropy":
        return cross_entropy(labels, probabilities, label_smoothing)
    if name == "dice":
        return dice(labels, probabilities)
    if name == "ce_dice":
        return cross_entropy(labels, probabilities, label_smoothing) + dice(labels, probabilities)
    if name == "focal":
        return focal(labels, probabilities, label_smoothing)
    if name == "lovasz":
        return lovasz_softmax(labels, probabilities)
    raise ValueError(f"--loss_name {name!r} has no multi-class form; pre-training on a "
                     f"multi-class dataset takes one of {MULTICLASS_LOSSES}.")


def make_multiclass_loss(cfg: LossConfig, model: keras.Model):
    """The K-class pre-training objective: the --loss_name term plus --l2/--l1/--darc1.

    Args:
        cfg: loss config (loss_name must be one of MULTICLASS_LOSSES).
        model: the model whose weights the regularizers act on.
    Returns:
        fn(labels int (N, S, S) with 255 = unlabelled, probabilities (N, S, S, K)) -> scalar.
    Raises:
        ValueError: a loss with no multi-class form (checked here, before any training).
    """
    if cfg.loss_name not in MULTICLASS_LOSSES:
        raise ValueError(f"--loss_name {cfg.loss_name!r} has no multi-class form; pre-training "
                         f"on a multi-class dataset takes one of {MULTICLASS_LOSSES}.")
    if cfg.darc1:
        raise ValueError("--darc1 is defined for the 2-channel output; drop it for multi-class "
                         "pre-training.")

    def loss(labels, probabilities):
        probabilities = ops.cast(probabilities, "float32")
        return (multiclass_loss(cfg.loss_name, labels, probabilities, cfg.label_smoothing)
                + regularization(cfg, model, probabilities))

    return loss
