"""Tiny models and tasks shared by the meta-learning tests (kept small: 2 cores, many suites)."""
from __future__ import annotations

import keras
import numpy as np

from data.tasks import ClassData
from models.layers import VariableDropout

SIZE = 32


def tiny_model(size: int = SIZE, seed: int = 0, dropout: float = 0.2) -> keras.Model:
    """A 2-conv segmentation net with BN and run-time-rate dropout (as EfficientLab's head): (N,S,S,3) in [0,255] -> (N,S,S,2) softmax."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = VariableDropout(dropout, name="final_dropout")(x)
    x = keras.layers.Conv2D(2, 1, name="final_layer_weights")(x)
    outputs = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs)


def cross_entropy(y_true, y_pred):
    """Mean pixel cross-entropy of one-hot labels and softmax probabilities."""
    return keras.ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))


def toy_class(name: str, colour, n: int = 10, size: int = SIZE, seed: int = 0) -> ClassData:
    """A class whose foreground is a square of one colour on grey noise, with a distractor."""
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    images = rng.integers(80, 140, size=(n, size, size, 3)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        side = int(rng.integers(size // 4, size // 2))
        y, x = rng.integers(0, size - side, size=2)
        images[i, y:y + side, x:x + side] = colour
        masks[i, y:y + side, x:x + side] = 1
    return ClassData(name=name, images=images, masks=masks)


def toy_tasks(num_classes: int = 6, n: int = 10, size: int = SIZE) -> dict[str, ClassData]:
    """num_classes toy classes with distinct colours."""
    palette = [(230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 30), (220, 40, 210),
               (30, 210, 220), (250, 140, 20), (120, 40, 170)]
    return {f"class{i}": toy_class(f"class{i}", palette[i % len(palette)], n, size)
            for i in range(num_classes)}
