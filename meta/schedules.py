"""Step-size schedules: the inner learning rate per adaptation step and the annealed meta step.

Inner schedules (ml4ai/mliis models/lr_schedulers.py):
* `fixed` / `constant`: lr_t = lr0.
* `step_decay` / `step`: lr_t = max(lr0 * rate ** floor(t / n), 1e-7).
* `cosine_anneal`: lr_t = max(0.5 * lr0 * (1 + cos(pi * t / T)), 0).

t is the index of the inner step (0-based). The reference always used T = --eval-iters, even in
the meta-training inner loop, and skipped the schedule in FOMAML; here T is the length of the
adaptation being run (inner_iters in meta-training, eval_iters at test time) and every algorithm
uses the schedule it is given.
"""
from __future__ import annotations

import math

STEP_DECAY_FLOOR = 1e-7  # reference floor of the step-decay schedule


def inner_learning_rate(step: int, *, learning_rate: float, scheduler: str = "fixed",
                        total_steps: int = 1, step_decay_rate: float = 0.5,
                        decay_after_n_steps: int = 5) -> float:
    """Learning rate of inner step `step`.

    Args:
        step: 0-based index of the inner step.
        learning_rate: lr0.
        scheduler: fixed | constant | step_decay | step | cosine_anneal.
        total_steps: T of the cosine schedule (the adaptation length).
        step_decay_rate: factor of the step schedule.
        decay_after_n_steps: period n of the step schedule.

    Returns:
        the learning rate as a Python float.

    Raises:
        ValueError: unknown scheduler.
    """
    if scheduler in ("fixed", "constant"):
        return float(learning_rate)
    if scheduler in ("step_decay", "step"):
        return max(learning_rate * step_decay_rate ** (step // decay_after_n_steps),
                   STEP_DECAY_FLOOR)
    if scheduler == "cosine_anneal":
        return max(0.5 * learning_rate * (1.0 + math.cos(math.pi * step / max(total_steps, 1))),
                   0.0)
    raise ValueError(f"--learning_rate_scheduler must be fixed, constant, step_decay, step or "
                     f"cosine_anneal. Received: {scheduler!r}")


def meta_step_size(iteration: int, *, initial: float, final: float, meta_iters: int) -> float:
    """Linearly annealed meta step epsilon of meta-iteration `iteration` (ml4ai/mliis
    meta_learners/supervised_reptile/supervised_reptile/train.py).

    Args:
        iteration: 0-based meta-iteration.
        initial: --meta-step (epsilon at iteration 0).
        final: --meta-step-final (reached as iteration -> meta_iters).
        meta_iters: total meta-iterations.

    Returns:
        frac * final + (1 - frac) * initial with frac = iteration / meta_iters.
    """
    frac = iteration / meta_iters if meta_iters > 0 else 0.0
    return frac * final + (1.0 - frac) * initial
