"""The frozen config of meta-training's outer loop; its inner loop is a `meta.adaptation.Adaptation`.

`args.py` fills it once from the command line; library code takes it (or plain kwargs) and
never sees argparse. Field names follow the paper's words.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from meta.adaptation import Adaptation
from meta.streams import PER_TASK, TASK_STREAMS


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class MetaConfig:
    """The outer loop: which algorithm, how many tasks, how big a meta-step; `inner` is how each
    task adapts (--inner-iters steps of --inner-batch, the adaptation flags' optimizer)."""

    algorithm: str = "reptile"  # reptile | fomaml (FOMAML* when foml_tail is set)
    train_shots: int = 5
    foml_tail: int | None = None
    sample_foml_train_val_with_replacement: bool = False
    meta_step_size: float = 0.1
    meta_step_size_final: float = 0.1
    meta_batch_size: int = 5
    meta_iters: int = 400_000
    eval_interval: int = 10
    monitor_tasks: int = 10  # tasks per split in the periodic train/val monitor
    keep_checkpoints: int = 2
    seed: int = 0
    task_streams: str = PER_TASK  # meta.streams: how a meta-batch's tasks draw their randomness
    inner: Adaptation = field(default_factory=lambda: Adaptation(steps=8, batch_size=8))

    def __post_init__(self):
        ensure(self.algorithm in ("reptile", "fomaml"),
               f"algorithm must be 'reptile' or 'fomaml'. Received: {self.algorithm!r}")
        ensure(self.inner.steps >= 1,
               f"--inner-iters must be >= 1. Received: {self.inner.steps}")
        ensure(self.inner.batch_size is not None,
               "meta-training draws mini-batches of --inner-batch pairs; it cannot be None")
        ensure(self.train_shots >= 1,
               f"--train-shots must be >= 1. Received: {self.train_shots}")
        if self.foml_tail is not None:
            ensure(self.algorithm == "fomaml",
                   "--foml-tail needs --foml (FOMAML* is FOMAML with a held-out tail).")
            ensure(1 <= self.foml_tail < self.train_shots,
                   f"--foml-tail must be in [1, --train-shots - 1] = [1, {self.train_shots - 1}]. "
                   f"Received: {self.foml_tail}")
        ensure(self.meta_batch_size >= 1,
               f"--meta-batch must be >= 1. Received: {self.meta_batch_size}")
        ensure(self.meta_iters >= 0, f"--meta-iters must be >= 0. Received: {self.meta_iters}")
        ensure(self.eval_interval >= 1,
               f"--eval-interval must be >= 1. Received: {self.eval_interval}")
        ensure(self.meta_step_size > 0 and self.meta_step_size_final > 0,
               "--meta-step and --meta-step-final must be > 0. "
               f"Received: {self.meta_step_size}, {self.meta_step_size_final}")
        ensure(self.task_streams in TASK_STREAMS,
               f"task_streams must be one of {TASK_STREAMS}. Received: {self.task_streams!r}")
        ensure(self.keep_checkpoints >= 1,
               f"--keep_checkpoints must be >= 1. Received: {self.keep_checkpoints}")
