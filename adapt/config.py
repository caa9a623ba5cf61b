"""Frozen configs of test-time adaptation: evaluation, UHO and the k-shot curves."""
from __future__ import annotations

from dataclasses import dataclass

from meta.config import ensure


@dataclass(frozen=True)
class EvalConfig:
    """Meta-test evaluation: shots, query size, repetitions, outputs (how each task adapts is
    the run's `Adaptation`)."""

    shots: int = 5
    num_query: int = 5  # the paper's DEFAULT_NUM_TEST_EXAMPLES
    eval_samples: int = 200
    serially_eval_all_test_tasks: bool = False
    transductive: bool = False
    eval_val_tasks: bool = False
    predictions_dir: str | None = None  # set when SAVE_PREDICTIONS is on
    save_fine_tuned_checkpoints: bool = False
    save_fine_tuned_checkpoints_train: bool = False
    save_fine_tuned_checkpoints_dir: str | None = None
    protocol: str = "paper"  # final evaluation: paper | hsnet (adapt/protocol_hsnet.py)

    def __post_init__(self):
        ensure(self.shots >= 1, f"--shots must be >= 1. Received: {self.shots}")
        ensure(self.protocol in ("paper", "hsnet"),
               f"--protocol must be 'paper' or 'hsnet'. Received: {self.protocol!r}")
        ensure(self.num_query >= 1, f"num_query must be >= 1. Received: {self.num_query}")
        ensure(self.eval_samples >= 1,
               f"--eval-samples must be >= 1. Received: {self.eval_samples}")


@dataclass(frozen=True)
class UHOConfig:
    """Update-hyperparameter optimization: GP search over the test-time adaptation routine."""

    num_configs_to_sample: int = 100
    uho_outer_iters: int = 1
    lr_range: tuple[float, float] = (5e-4, 0.05)
    drop_rate_range: tuple[float, float] = (0.2, 0.2)
    aug_rate_range: tuple[float, float] = (0.5, 0.5)
    batch_size_range: tuple[int, int] = (8, 8)
    min_steps: int = 0
    max_steps: int = 80
    patience: int = 50
    eval_tasks_with_median_early_stopping_iterations: bool = False
    meta_fine_tune_steps_on_train_val: int = 0
    results_csv_name: str = "val-set_hyper_param_search_results.csv"
    estimator: str = "GP"
    repetitions: int = 4  # episodes per val class per configuration (reference: 1 with --fss_1000)

    def __post_init__(self):
        ensure(self.num_configs_to_sample >= 1,
               f"--num_configs_to_sample must be >= 1. Received: {self.num_configs_to_sample}")
        for flag, (low, high) in (("lr", self.lr_range), ("drop_rate", self.drop_rate_range),
                                  ("aug_rate", self.aug_rate_range),
                                  ("batch_size", self.batch_size_range)):
            ensure(low <= high, f"--{flag}_search_range_low must be <= --{flag}_search_range_high."
                                f" Received: {low} > {high}")
        ensure(self.lr_range[0] > 0, f"--lr_search_range_low must be > 0. Received: {self.lr_range[0]}")
        ensure(0 <= self.min_steps <= self.max_steps,
               f"need 0 <= --min_steps <= --max_steps. Received: {self.min_steps}, {self.max_steps}")
        ensure(self.repetitions >= 1,
               f"--uho_repetitions must be >= 1. Received: {self.repetitions}")
        ensure(self.estimator == "GP",
               f"--uho_estimator must be 'GP'. Received: {self.estimator!r}")


@dataclass(frozen=True)
class KShotConfig:
    """The k-shot learning-curve experiment."""

    k_values: tuple[int, ...] = (1, 5, 10, 50, 100, 200, 400)  # ml4ai/mliis DEFAULT_K_RANGE
    k_shot_iter_range: tuple[int, ...] | None = None
    num_query: int = 20
    baseline_checkpoint: str | None = None  # joint-training baseline to plot against
    # early-stopping bound when k >= 10 (ml4ai/mliis
    # meta_learners/supervised_reptile/supervised_reptile/eval.py)
    max_steps: int = 500
    patience: int = 50

    def __post_init__(self):
        ensure(len(self.k_values) >= 1 and all(k >= 1 for k in self.k_values),
               f"--k_shot_range needs values >= 1. Received: {self.k_values}")
        if self.k_shot_iter_range is not None:
            ensure(len(self.k_shot_iter_range) == len(self.k_values)
                   and all(i >= 1 for i in self.k_shot_iter_range),
                   f"--k_shot_iter_range needs one step count >= 1 per k of --k_shot_range "
                   f"{self.k_values}. Received: {self.k_shot_iter_range}")
        ensure(self.num_query >= 1, f"k-shot num_query must be >= 1. Received: {self.num_query}")
        ensure(self.max_steps >= 1, f"--k_shot_max_steps must be >= 1. Received: {self.max_steps}")
