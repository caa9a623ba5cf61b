"""Arithmetic on lists of weight tensors: the vocabulary Reptile and FOMAML are written in.

Every function takes and returns plain lists of tensors (one entry per variable, in the same
order), so the meta-algorithms read like the paper's formulas and each operation is tested
alone (as openai/supervised-reptile `supervised_reptile/variables.py`). Inputs may be tensors,
variables or arrays. `phi - theta` (`meta.state.Snapshot.difference`) is `subtract`; the
meta-update's pseudo-gradient `-mean(d)` (`meta.algorithms.MetaLearner`) is `scale`.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

Weights = Sequence[tf.Tensor]


def _check_same_length(*lists: Weights) -> None:
    lengths = {len(w) for w in lists}
    if len(lengths) != 1:
        raise ValueError(f"Weight lists must have the same length. Received lengths: "
                         f"{[len(w) for w in lists]}")


def subtract(a: Weights, b: Weights) -> list[tf.Tensor]:
    """Element-wise a - b.

    Args:
        a: list of tensors.
        b: list of tensors with the same shapes as a.

    Returns:
        list of tensors a[i] - b[i].
    """
    _check_same_length(a, b)
    return [tf.convert_to_tensor(x) - tf.convert_to_tensor(y) for x, y in zip(a, b)]


def scale(a: Weights, factor) -> list[tf.Tensor]:
    """Element-wise factor * a.

    Args:
        a: list of tensors.
        factor: a Python float or scalar tensor.

    Returns:
        list of tensors factor * a[i] (dtype of a[i]).
    """
    return [tf.convert_to_tensor(x) * tf.cast(factor, tf.convert_to_tensor(x).dtype) for x in a]
