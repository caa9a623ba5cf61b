"""Evaluation metrics: IoU per query image, task mIoU, 95% CI, class-accumulated IoU.

Two conventions are reported because the literature uses both:
* the paper's mean IoU: IoU per query image = (|P & G| + eps) / (|P | G| + eps) on the
  thresholded foreground (eps = 1e-7, so an empty prediction of an empty mask scores 1);
  task IoU = mean over its queries; reported = mean over task samples +/- 1.96 * std / sqrt(n)
  (population std, as the reference);
* the class-accumulated IoU of HSNet/DCAMA/VAT: per class, sum of intersections / sum of unions
  over all its query images (every repetition), then the mean over classes; beside it their
  FB-IoU, the mean of the foreground and background IoU accumulated over all query images.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

EPSILON = 1e-7
THRESHOLD = 0.5  # foreground probability above which a pixel is predicted foreground


def foreground(probabilities: np.ndarray) -> np.ndarray:
    """Thresholded foreground of the model's (N,S,S,2) softmax output.

    Args:
        probabilities: (N,S,S,2) with channel 1 = foreground, or (N,S,S) foreground probabilities.

    Returns:
        bool (N,S,S).
    """
    p = np.asarray(probabilities)
    if p.ndim == 4:
        p = p[..., 1]
    return p > THRESHOLD


def intersections_unions(predicted: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts |P & G| and |P | G| per image.

    Args:
        predicted: bool/{0,1} (N,S,S) predicted foreground.
        masks: {0,1} (N,S,S) ground truth (rounded).

    Returns:
        (intersections, unions), int64 (N,) each.
    """
    p = np.asarray(predicted).astype(bool)
    g = np.rint(np.asarray(masks)).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction and mask shapes differ: {p.shape} vs {g.shape}")
    axes = tuple(range(1, p.ndim))
    return (np.logical_and(p, g).sum(axis=axes).astype(np.int64),
            np.logical_or(p, g).sum(axis=axes).astype(np.int64))


def iou_per_image(predicted: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU of each image, (|P & G| + eps) / (|P | G| + eps).

    Args:
        predicted: bool/{0,1} (N,S,S) predicted foreground.
        masks: {0,1} (N,S,S) ground truth.

    Returns:
        float64 (N,).
    """
    return ratio(*intersections_unions(predicted, masks))


def ratio(intersections: np.ndarray, unions: np.ndarray) -> np.ndarray:
    """IoU from pixel counts: (|P & G| + eps) / (|P | G| + eps), so empty of empty scores 1."""
    return (intersections + EPSILON) / (unions + EPSILON)


def confidence_interval_95(values: Sequence[float]) -> float:
    """Half-width of the 95% normal confidence interval of the mean: 1.96 * std / sqrt(n).

    Args:
        values: n >= 1 samples (e.g. task IoUs); std is the population std (ddof = 0).

    Returns:
        the half-width (0 for one sample).
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("confidence_interval_95 needs at least one value.")
    return float(1.96 * v.std() / np.sqrt(v.size))


def class_accumulated_iou(per_class: Mapping[str, Iterable[tuple[int, int]]],
                          empty_class: float = 1.0) -> float:
    """Mean over classes of sum(intersections) / sum(unions) (the FSS-1000 IoU of later papers).

    Args:
        per_class: class -> iterable of (intersection, union) pixel counts of its query images.
        empty_class: the score of a class whose unions sum to 0 (1: nothing to find, nothing
            predicted; juhongm999/hsnet common/logger.py divides by max(union, 1), i.e. 0).

    Returns:
        the mean class IoU.
    """
    if not per_class:
        raise ValueError("class_accumulated_iou needs at least one class.")
    scores = []
    for counts in per_class.values():
        counts = np.asarray(list(counts), np.float64).reshape(-1, 2)
        inter, union = counts[:, 0].sum(), counts[:, 1].sum()
        scores.append(empty_class if union == 0 else inter / union)
    return float(np.mean(scores))


def foreground_background_iou(intersections: Sequence[int], unions: Sequence[int],
                              pixels: Sequence[int]) -> tuple[float, float]:
    """Foreground and background IoU, each accumulated over all the given images.

    Background counts follow from the foreground ones: a pixel is in neither P nor G exactly when
    it is outside P | G, so |~P & ~G| = pixels - |P | G| and |~P | ~G| = pixels - |P & G|.
    FB-IoU (juhongm999/hsnet common/logger.py) is the mean of the two; both sums run over the
    whole evaluation, not per class.

    Args:
        intersections: |P & G| per image.
        unions: |P | G| per image.
        pixels: pixel count per image.

    Returns:
        (foreground IoU, background IoU); a side whose unions sum to 0 scores 1.
    """
    if len(pixels) == 0:
        raise ValueError("foreground_background_iou needs at least one image.")
    inter, union, n = (float(np.sum(np.asarray(v, np.float64)))
                       for v in (intersections, unions, pixels))

    def ratio(i: float, u: float) -> float:
        return 1.0 if u == 0 else i / u

    return ratio(inter, union), ratio(n - union, n - inter)
