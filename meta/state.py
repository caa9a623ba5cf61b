"""Which state is snapshotted, said out loud.

The two states of ml4ai/mliis meta_learners/supervised_reptile/supervised_reptile/reptile.py:

* **Model state** = the trainable weights (kernels, biases, BN gamma/beta): what meta-training
  moves. After each meta-training task only this is reset, so BN moving statistics carry over
  between tasks, as in the paper.
* **Full state** = every model variable (model state + BN moving statistics + dropout/drop-connect
  seed-generator states) + every optimizer variable (slots, iterations, learning rate): what an
  evaluation task must leave untouched.

A `Snapshot` keeps shadow `tf.Variable`s next to the originals and copies between them with one
compiled group of assigns: no numpy round trip (`get_weights`/`set_weights` costs ~100 ms per task
on a CPU).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import keras
import tensorflow as tf

from meta import weights
from report.timing import section


def _tf_variable(v) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (or the variable itself)."""
    inner = getattr(v, "value", None)
    return inner if isinstance(inner, tf.Variable) else v


def unique_variables(variables: Iterable) -> list:
    """Drop repeated variables (same object), keeping first-seen order.

    Args:
        variables: Keras or tf variables.

    Returns:
        list without duplicates.
    """
    seen, out = set(), []
    for v in variables:
        key = id(_tf_variable(v))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def full_state(model: keras.Model, optimizers: Sequence[keras.optimizers.Optimizer] = ()) -> list:
    """Everything an evaluation may touch: all model variables plus optimizer variables.

    Args:
        model: a Keras model; `model.variables` includes BN moving statistics and the
            seed-generator states of dropout / drop-connect layers.
        optimizers: built optimizers whose variables (slots, iterations, lr) belong to the state.

    Returns:
        list of unique variables.
    """
    variables = list(model.variables)
    for opt in optimizers:
        variables += list(opt.variables)
    return unique_variables(variables)


class Snapshot:
    """Shadow copies of a fixed list of variables, saved and restored in-graph.

    Args:
        variables: the variables to mirror (their order is the order of `values`).
        name: used in the shadow variables' names.
    """

    def __init__(self, variables: Sequence, name: str = "snapshot"):
        self.variables = list(variables)
        self._targets = [_tf_variable(v) for v in self.variables]
        with tf.init_scope():
            self._copies = [tf.Variable(tf.identity(t), trainable=False, name=f"{name}_{i}")
                            for i, t in enumerate(self._targets)]
        self._save = tf.function(self._save_graph)
        self._restore = tf.function(self._restore_graph)
        self._difference = tf.function(self._difference_graph)

    def _save_graph(self):
        for copy, target in zip(self._copies, self._targets):
            copy.assign(target)

    def _restore_graph(self):
        for copy, target in zip(self._copies, self._targets):
            target.assign(copy)

    def _difference_graph(self):
        return weights.subtract(self._targets, self._copies)

    def save(self) -> None:
        """Copy the current values of the variables into the snapshot."""
        with section("snapshots"):
            self._save()

    def restore(self) -> None:
        """Copy the snapshot back into the variables."""
        with section("snapshots"):
            self._restore()

    def difference(self) -> list[tf.Tensor]:
        """Current values minus the saved ones, per variable, in one compiled call."""
        with section("directions"):
            return self._difference()

    @property
    def values(self) -> list[tf.Variable]:
        """The saved values (shadow variables, read-only by convention), in `variables` order."""
        return list(self._copies)
