"""Who may use the weights a `Segmenter` holds: one call at a time, a thread's own adaptation,
and never the weights of a fit that diverged.

A Segmenter has one model, so every thread shares the weights its last `fit` adapted. Each call
holds one lock (`AdaptedState.lock`, re-entrant), so calls never interleave inside the model.
Between calls another thread may fit or reset: every fit and reset starts a new generation of the
weights, each thread remembers the generation its own last fit made, and a thread that fitted is
refused the weights of another generation (its predictions would be the other thread's). A
thread that never fitted uses whatever the model holds (fit once, predict from many threads).
"""
from __future__ import annotations

import threading

from errors import DivergenceError, UserError


class AdaptedState:
    """The lock, the generation of the adapted weights, and a divergence seen by the last fit."""

    def __init__(self):
        self.lock = threading.RLock()
        self.generation = 0
        self.diverged: str | None = None  # the message of the last fit, when it diverged
        self._own = threading.local()  # .generation: what this thread's last fit made

    def replaced(self, *, by_fit: bool) -> None:
        """The model's weights changed (a fit or a reset): a new generation, this thread's.

        Args:
            by_fit: a fit made them (a reset marks a thread's own only when it fitted before).
        """
        self.generation += 1
        if by_fit or getattr(self._own, "generation", None) is not None:
            self._own.generation = self.generation

    def check_usable(self, what: str) -> None:
        """Refuse weights a diverged fit left, or another thread's adaptation.

        Args:
            what: the call, for the message (e.g. "predict").

        Raises:
            DivergenceError: the last fit diverged (its weights were dropped).
            UserError: this thread fitted, and another thread's fit or reset replaced them.
        """
        if self.diverged is not None:
            raise DivergenceError(f"{what} refused: {self.diverged}")
        own = getattr(self._own, "generation", None)
        if own is not None and own != self.generation:
            raise UserError(f"{what} refused: another thread's fit or reset replaced the weights "
                            f"this thread's fit adapted, so they would not be yours. Hold "
                            f"`with segmenter.lock:` around each thread's fit and predict, or "
                            f"give each thread its own Segmenter (from_checkpoint).")
