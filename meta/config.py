"""Frozen configs of the meta-learning core: the inner loop and the outer loop.

`args.py` fills these once from the command line; library code takes them (or plain
kwargs) and never sees argparse. Field names follow the paper's words.
"""
from __future__ import annotations

from dataclasses import dataclass

from meta.streams import PER_TASK, TASK_STREAMS

LR_SCHEDULERS = ("fixed", "constant", "step_decay", "step", "cosine_anneal")
AUGMENTATIONS = ("paper", "metaseg")  # data.augmentations.AUGMENTATIONS


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class InnerConfig:
    """How one task is adapted: the inner loop (meta-training) or test-time adaptation."""

    # plain SGD; otherwise Adam with beta1 = 0 (ml4ai/mliis meta_learners/args.py)
    sgd: bool = False
    learning_rate: float = 1e-3
    inner_batch_size: int = 8
    inner_iters: int = 8
    augment: bool = False
    aug_rate: float = 0.5
    augmentation: str = "paper"  # the paper's transforms (data/paper_augment.py) or data/augment.py
    learning_rate_scheduler: str = "fixed"
    step_decay_rate: float = 0.5
    decay_after_n_steps: int = 5
    replacement: bool = False  # mini-batches drawn with replacement
    weight_decay: float = 1.0  # multiplicative shrink before every inner step; 1 = off

    def __post_init__(self):
        ensure(self.learning_rate > 0,
               f"--learning-rate must be > 0. Received: {self.learning_rate}")
        ensure(self.inner_batch_size >= 1,
               f"--inner-batch must be >= 1. Received: {self.inner_batch_size}")
        ensure(self.inner_iters >= 1,
               f"--inner-iters must be >= 1. Received: {self.inner_iters}")
        ensure(0.0 <= self.aug_rate <= 1.0,
               f"--aug_rate must be in [0, 1]. Received: {self.aug_rate}")
        ensure(self.augmentation in AUGMENTATIONS,
               f"--augmentation must be one of {AUGMENTATIONS}. Received: {self.augmentation!r}")
        ensure(self.learning_rate_scheduler in LR_SCHEDULERS,
               f"--learning_rate_scheduler must be one of {LR_SCHEDULERS}. "
               f"Received: {self.learning_rate_scheduler!r}")
        ensure(self.decay_after_n_steps >= 1,
               f"--decay_after_n_steps must be >= 1. Received: {self.decay_after_n_steps}")
        ensure(0.0 < self.weight_decay <= 1.0,
               f"--weight-decay must be in (0, 1]. Received: {self.weight_decay}")


@dataclass(frozen=True)
class MetaConfig:
    """The outer loop: which algorithm, how many tasks, how big a meta-step."""

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

    def __post_init__(self):
        ensure(self.algorithm in ("reptile", "fomaml"),
               f"algorithm must be 'reptile' or 'fomaml'. Received: {self.algorithm!r}")
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
