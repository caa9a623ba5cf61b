"""The evaluation's IoU as a Keras-ops metric (same definition as adapt/iou.py, on tensors)."""
from __future__ import annotations

from keras import ops

EPSILON = 1e-7
THRESHOLD = 0.5


def iou_per_image(y_true, y_pred):
    """IoU of each image: (|P & G| + eps) / (|P | G| + eps), P = foreground probability > 0.5.

    Args:
        y_true: one-hot (N, S, S, 2) or {0, 1} masks (N, S, S).
        y_pred: probabilities (N, S, S, 2).
    Returns:
        float32 (N,).
    """
    g = y_true[..., 1] if len(y_true.shape) == 4 else y_true
    g = ops.cast(ops.greater(ops.cast(g, "float32"), 0.5), "float32")
    p = ops.cast(ops.greater(ops.cast(y_pred[..., 1], "float32"), THRESHOLD), "float32")
    intersection = ops.sum(p * g, axis=(1, 2))
    union = ops.sum(ops.maximum(p, g), axis=(1, 2))
    return (intersection + EPSILON) / (union + EPSILON)


def mean_iou(y_true, y_pred):
    """Mean over the batch of the per-image IoU (the paper's evaluation metric).

    Args:
        y_true: one-hot (N, S, S, 2) or {0, 1} masks (N, S, S).
        y_pred: probabilities (N, S, S, 2).
    Returns:
        float32 scalar in [0, 1].
    """
    return ops.mean(iou_per_image(y_true, y_pred))
