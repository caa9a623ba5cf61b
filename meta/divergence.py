"""Stop a diverging meta-training run before it saves anything (weights, loss, weight norm).

After every meta-update one compiled call reduces all float model variables to two numbers, on
the device: whether every value is finite, and the global norm of the meta-learned variables. A
non-finite loss, a non-finite variable, or a norm grown more than `GROWTH_LIMIT` times its value
at the start of this run (batch norm can keep the loss finite while the weights run away) stops
the run with one line naming the meta-iterations since the last checkpoint. The cost is one
small host transfer per meta-iteration, not one per variable.
"""
from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from errors import DivergenceError

GROWTH_LIMIT = 1e3  # three orders of magnitude above the starting norm


def _tensor(variable):
    return getattr(variable, "value", variable)  # a Keras variable's tf.Variable


class DivergenceGuard:
    """Checks the variables after each meta-update (built once; one trace).

    Args:
        meta_variables: the meta-learned variables (their global norm is watched).
        all_variables: every model variable (float ones must stay finite, BN statistics too).
    """

    def __init__(self, meta_variables: Sequence, all_variables: Sequence):
        watched = [_tensor(v) for v in all_variables if tf.as_dtype(v.dtype).is_floating]
        meta_variables = [_tensor(v) for v in meta_variables]

        @tf.function
        def summary():
            finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v))
                                             for v in watched]))
            norm = tf.linalg.global_norm([tf.cast(v, tf.float32) for v in meta_variables])
            return tf.stack([tf.cast(finite, tf.float32), norm])

        self._summary = summary
        self.initial_norm = self._read()[1]

    def _read(self) -> tuple[bool, float]:
        finite, norm = self._summary().numpy()
        return bool(finite), float(norm)

    def problem(self, loss: float, what_loss: str = "inner-loop loss") -> str | None:
        """What went bad, in a few words, or None when the loss and the variables are sound.

        Args:
            loss: the loss to check (a non-finite one is a problem).
            what_loss: how to name the loss in the answer.

        Returns:
            e.g. "weight norm grew from 12.3 to 4.5e+27", or None.
        """
        finite, norm = self._read()
        if math.isfinite(loss) and finite and math.isfinite(norm) and \
                norm <= GROWTH_LIMIT * max(self.initial_norm, 1e-12):
            return None
        return (f"non-finite {what_loss} ({loss})" if not math.isfinite(loss) else
                "non-finite weights" if not finite else
                f"weight norm grew from {self.initial_norm:.4g} to {norm:.4g}")

    def check(self, loss: float, *, first: int, last: int, last_checkpoint: str | None) -> None:
        """Raise DivergenceError if the loss or the variables went bad.

        Args:
            loss: the meta-iteration's mean inner loss.
            first, last: meta-iterations since the last checkpoint (1-based, inclusive).
            last_checkpoint: the newest good checkpoint (path or description), None if none.
        """
        what = self.problem(loss)
        if what is None:
            return
        saved = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else
                 "no checkpoint was written yet")
        raise DivergenceError(
            f"Meta-training diverged within meta-iterations {first}..{last} ({what}); nothing "
            f"was saved from them and {saved}. Lower --learning-rate or --meta-step.")
