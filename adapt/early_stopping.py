"""Early stopping on a higher-is-better metric, counted in adaptation steps.

After ml4ai/mliis meta_learners/hyperparam_search.py.

UHO and the k-shot experiment adapt a task one step at a time, score the query IoU after every
step and feed it here; the stopper remembers the best step count and says when to stop.

Semantics (the reference's, written out):
* while `steps_taken <= min_steps` the latest metric is the best and its step count the best
  step count; stopping is impossible (we must run at least `min_steps` steps);
* after that, a metric *strictly* above the best resets the patience counter and becomes the best;
* anything else increments the counter, and the run stops once the counter exceeds `patience`,
  i.e. after `patience + 1` consecutive steps without improvement.
"""
from __future__ import annotations

import math


class EarlyStopper:
    """Tracks the best (step count, metric) of one adaptation run and when to give up.

    Args:
        patience: consecutive non-improving steps tolerated (the stop comes on the next one).
        min_steps: steps that always run; the best step count is never below it.
    """

    def __init__(self, patience: int = 50, min_steps: int = 0):
        if patience < 0:
            raise ValueError(f"patience must be >= 0. Received: {patience}")
        if min_steps < 0:
            raise ValueError(f"min_steps must be >= 0. Received: {min_steps}")
        self.patience = patience
        self.min_steps = min_steps
        self.best_steps: int | None = None
        self.best_metric: float | None = None
        self._bad_steps = 0

    def update(self, metric: float, steps_taken: int) -> bool:
        """Record the metric measured after `steps_taken` steps.

        Args:
            metric: the score after this step (higher is better); NaN never counts as better.
            steps_taken: steps run so far (0 = before any step).

        Returns:
            True when adaptation should stop now.
        """
        metric = float(metric)
        if steps_taken <= self.min_steps:
            self.best_metric, self.best_steps, self._bad_steps = metric, steps_taken, 0
            return False
        if self.best_metric is None or math.isnan(self.best_metric) or metric > self.best_metric:
            self.best_metric, self.best_steps, self._bad_steps = metric, steps_taken, 0
            return False
        self._bad_steps += 1
        return self._bad_steps > self.patience

    def result(self) -> tuple[int, float]:
        """The best step count and its metric.

        Returns:
            (best_steps, best_metric).

        Raises:
            RuntimeError: nothing was recorded yet.
        """
        if self.best_steps is None:
            raise RuntimeError("EarlyStopper.result() before any update()")
        return self.best_steps, self.best_metric
