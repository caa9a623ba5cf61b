"""Phase 1 of meta-transfer learning on a separate multi-class dataset (COCO / COCO-Stuff).

As ahirsharan/MTL-Segmentation pre-trains (trainer/pre.py, dataloader/dataset_loader.py).

The plain U-Net with a K-channel head is trained on the dataset's train split with the
optimizer, schedule, checkpoints, resume and logs of the pooled pre-training (baselines/pretrain.py:
`train_epochs`). After each epoch the val split is predicted (inference mode) and the mean IoU
over the K classes selects the best weights: per class, IoU = TP / (TP + FP + FN) accumulated
over every labelled val pixel, averaged over the classes that occur in the val labels or the
predictions (a class absent from both has no IoU). Unlabelled pixels (255) count nowhere.

For scale, `constant_prediction_miou` is the val mIoU of predicting the most frequent training
class everywhere; it is written to best.json next to the best val mIoU. Epoch lines are printed
by baselines.pretrain.train_epochs, as for the pooled pre-training.
"""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from baselines.config import MTLConfig
from baselines.pretrain import PretrainResult, PretrainStep, train_epochs
from data.multiclass import IGNORE_LABEL, MulticlassData

_PREDICT_BATCH = 16


class MulticlassStep(PretrainStep):
    """PretrainStep whose targets are the class ids themselves (255 = unlabelled)."""

    def targets(self, masks: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.round(masks), tf.int32)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (K, K) counts [true class, predicted class] over the labelled pixels.

    Args:
        labels: uint8 class ids with IGNORE_LABEL for unlabelled pixels.
        predicted: int class ids, same shape.
        num_classes: K.

    Returns:
        the confusion matrix.
    """
    keep = labels != IGNORE_LABEL
    index = labels[keep].astype(np.int64) * num_classes + predicted[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU over the classes with a non-empty union, per-class IoU with NaN for the others)."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return (float(np.nanmean(iou)) if np.any(union > 0) else 0.0), iou


def constant_prediction_miou(data: MulticlassData) -> tuple[int, float]:
    """The most frequent training class and the val mIoU of predicting it everywhere."""
    majority = int(np.argmax(data.class_pixels("train")))
    labels = data.val.labels
    confusion = confusion_matrix(labels, np.full(labels.shape, majority), data.num_classes)
    return majority, mean_iou(confusion)[0]


def make_validate(model: keras.Model, loss_fn, data: MulticlassData
                  ) -> Callable[[], tuple[float, float]]:
    """() -> (val mIoU over the K classes, mean val loss), inference mode, batched, traced once."""
    size = tuple(model.input_shape[1:3])

    def graph(images, labels):
        probabilities = model(images, training=False)
        return tf.argmax(probabilities, axis=-1, output_type=tf.int32), loss_fn(labels,
                                                                                probabilities)
    graph = tf.function(graph, input_signature=[tf.TensorSpec((None, *size, 3), tf.float32),
                                                tf.TensorSpec((None, *size), tf.int32)])

    def validate() -> tuple[float, float]:
        predicted, losses, weights = [], [], []
        for i in range(0, len(data.val), _PREDICT_BATCH):
            ids, loss = graph(tf.constant(data.val.images[i:i + _PREDICT_BATCH], tf.float32),
                              tf.constant(data.val.labels[i:i + _PREDICT_BATCH], tf.int32))
            predicted.append(ids.numpy())
            losses.append(float(loss))
            weights.append(len(ids))
        confusion = confusion_matrix(data.val.labels, np.concatenate(predicted),
                                     data.num_classes)
        return mean_iou(confusion)[0], float(np.average(losses, weights=weights))
    return validate


def pre_train_multiclass(model: keras.Model, loss_fn, data: MulticlassData, *, mtl: MTLConfig,
                         aug_rate: float, rng: np.random.Generator, run_dir: str,
                         config_json: str, stop_after: int | None = None) -> PretrainResult:
    """Train the K-class U-Net on data.train, keeping the weights with the best val mIoU.

    Args:
        model: the plain U-Net with a K-channel head (K = data.num_classes).
        loss_fn: models.multiclass_losses.make_multiclass_loss(...) of the model.
        data: the loaded dataset.
        mtl: pre-training settings (see baselines.pretrain.train_epochs).
        aug_rate: augmentation probability (flips, rotation, scale, shift: labels by nearest
            neighbour, so ids stay ids).
        rng: the training generator (checkpointed).
        run_dir: output directory.
        config_json: the run's resolved config.
        stop_after: stop once this many epochs are completed.

    Returns:
        PretrainResult.

    Raises:
        ValueError: the model's head does not have K channels.
    """
    if model.output_shape[-1] != data.num_classes:
        raise ValueError(f"The U-Net head has {model.output_shape[-1]} channels but the dataset "
                         f"has --num_classes {data.num_classes}.")
    majority, constant = constant_prediction_miou(data)
    step = MulticlassStep(model, loss_fn, momentum=mtl.pre_custom_momentum,
                          weight_decay=mtl.pre_custom_weight_decay)
    return train_epochs(model, step, data.train.images, data.train.labels,
                        make_validate(model, loss_fn, data), mtl=mtl, aug_rate=aug_rate, rng=rng,
                        run_dir=run_dir, config_json=config_json, stop_after=stop_after,
                        best_info={"dataset": data.layout, "dataset_dir": data.root,
                                   "constant_prediction_val_miou": constant,
                                   "majority_class": majority})
