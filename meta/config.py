"""Frozen configs for meta-learning, evaluation, UHO and meta-transfer learning.

`args.py` fills these once from the command line; library code takes them (or plain
kwargs) and never sees argparse. Field names follow the paper's words.
"""
from __future__ import annotations

from dataclasses import dataclass

LR_SCHEDULERS = ("fixed", "constant", "step_decay", "step", "cosine_anneal")
AUGMENTATIONS = ("paper", "metaseg")  # data.augmentations.AUGMENTATIONS


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class InnerConfig:
    """How one task is adapted: the inner loop (meta-training) or test-time adaptation."""

    sgd: bool = False  # plain SGD; otherwise Adam with beta1 = 0 (reference 2.8)
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
        _check(self.learning_rate > 0,
               f"--learning-rate must be > 0. Received: {self.learning_rate}")
        _check(self.inner_batch_size >= 1,
               f"--inner-batch must be >= 1. Received: {self.inner_batch_size}")
        _check(self.inner_iters >= 1,
               f"--inner-iters must be >= 1. Received: {self.inner_iters}")
        _check(0.0 <= self.aug_rate <= 1.0,
               f"--aug_rate must be in [0, 1]. Received: {self.aug_rate}")
        _check(self.augmentation in AUGMENTATIONS,
               f"--augmentation must be one of {AUGMENTATIONS}. Received: {self.augmentation!r}")
        _check(self.learning_rate_scheduler in LR_SCHEDULERS,
               f"--learning_rate_scheduler must be one of {LR_SCHEDULERS}. "
               f"Received: {self.learning_rate_scheduler!r}")
        _check(self.decay_after_n_steps >= 1,
               f"--decay_after_n_steps must be >= 1. Received: {self.decay_after_n_steps}")
        _check(0.0 < self.weight_decay <= 1.0,
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

    def __post_init__(self):
        _check(self.algorithm in ("reptile", "fomaml"),
               f"algorithm must be 'reptile' or 'fomaml'. Received: {self.algorithm!r}")
        _check(self.train_shots >= 1,
               f"--train-shots must be >= 1. Received: {self.train_shots}")
        if self.foml_tail is not None:
            _check(self.algorithm == "fomaml",
                   "--foml-tail needs --foml (FOMAML* is FOMAML with a held-out tail).")
            _check(1 <= self.foml_tail < self.train_shots,
                   f"--foml-tail must be in [1, --train-shots - 1] = [1, {self.train_shots - 1}]. "
                   f"Received: {self.foml_tail}")
        _check(self.meta_batch_size >= 1,
               f"--meta-batch must be >= 1. Received: {self.meta_batch_size}")
        _check(self.meta_iters >= 0, f"--meta-iters must be >= 0. Received: {self.meta_iters}")
        _check(self.eval_interval >= 1,
               f"--eval-interval must be >= 1. Received: {self.eval_interval}")
        _check(self.meta_step_size > 0 and self.meta_step_size_final > 0,
               "--meta-step and --meta-step-final must be > 0. "
               f"Received: {self.meta_step_size}, {self.meta_step_size_final}")
        _check(self.keep_checkpoints >= 1,
               f"--keep_checkpoints must be >= 1. Received: {self.keep_checkpoints}")


@dataclass(frozen=True)
class EvalConfig:
    """Meta-test evaluation: shots, query size, adaptation budget, repetitions, outputs."""

    shots: int = 5
    num_query: int = 5  # the paper's DEFAULT_NUM_TEST_EXAMPLES
    eval_batch_size: int = 8
    eval_iters: int = 4
    eval_samples: int = 200
    serially_eval_all_test_tasks: bool = False
    transductive: bool = False
    eval_val_tasks: bool = False
    predictions_dir: str | None = None  # set when SAVE_PREDICTIONS is on
    save_fine_tuned_checkpoints: bool = False
    save_fine_tuned_checkpoints_train: bool = False
    save_fine_tuned_checkpoints_dir: str | None = None
    protocol: str = "paper"  # final evaluation: paper | hsnet (meta/protocol_hsnet.py)

    def __post_init__(self):
        _check(self.shots >= 1, f"--shots must be >= 1. Received: {self.shots}")
        _check(self.protocol in ("paper", "hsnet"),
               f"--protocol must be 'paper' or 'hsnet'. Received: {self.protocol!r}")
        _check(self.num_query >= 1, f"num_query must be >= 1. Received: {self.num_query}")
        _check(self.eval_batch_size >= 1,
               f"--eval-batch must be >= 1. Received: {self.eval_batch_size}")
        _check(self.eval_iters >= 0, f"--eval-iters must be >= 0. Received: {self.eval_iters}")
        _check(self.eval_samples >= 1,
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
        _check(self.num_configs_to_sample >= 1,
               f"--num_configs_to_sample must be >= 1. Received: {self.num_configs_to_sample}")
        for flag, (low, high) in (("lr", self.lr_range), ("drop_rate", self.drop_rate_range),
                                  ("aug_rate", self.aug_rate_range),
                                  ("batch_size", self.batch_size_range)):
            _check(low <= high, f"--{flag}_search_range_low must be <= --{flag}_search_range_high."
                                f" Received: {low} > {high}")
        _check(self.lr_range[0] > 0, f"--lr_search_range_low must be > 0. Received: {self.lr_range[0]}")
        _check(0 <= self.min_steps <= self.max_steps,
               f"need 0 <= --min_steps <= --max_steps. Received: {self.min_steps}, {self.max_steps}")
        _check(self.repetitions >= 1,
               f"--uho_repetitions must be >= 1. Received: {self.repetitions}")
        _check(self.estimator == "GP",
               f"--uho_estimator must be 'GP'. Received: {self.estimator!r}")


@dataclass(frozen=True)
class KShotConfig:
    """The k-shot learning-curve experiment."""

    k_values: tuple[int, ...] = (1, 5, 10, 50, 100, 200, 400)  # ml4ai/mliis DEFAULT_K_RANGE
    k_shot_iter_range: tuple[int, ...] | None = None
    num_query: int = 20
    baseline_checkpoint: str | None = None  # joint-training baseline to plot against
    max_steps: int = 500  # early-stopping bound when k >= 10 (reference-spec 4.6)
    patience: int = 50

    def __post_init__(self):
        _check(len(self.k_values) >= 1 and all(k >= 1 for k in self.k_values),
               f"--k_shot_range needs values >= 1. Received: {self.k_values}")
        if self.k_shot_iter_range is not None:
            _check(len(self.k_shot_iter_range) == len(self.k_values)
                   and all(i >= 1 for i in self.k_shot_iter_range),
                   f"--k_shot_iter_range needs one step count >= 1 per k of --k_shot_range "
                   f"{self.k_values}. Received: {self.k_shot_iter_range}")
        _check(self.num_query >= 1, f"k-shot num_query must be >= 1. Received: {self.num_query}")
        _check(self.max_steps >= 1, f"--k_shot_max_steps must be >= 1. Received: {self.max_steps}")


@dataclass(frozen=True)
class MTLConfig:
    """Meta-transfer learning (Sun et al. 2019) with a U-Net: defaults of the original system."""

    phase: str = "meta_train"  # pre_train | meta_train | meta_eval
    meta_lr1: float = 5e-4  # scale/shift and batch-norm gamma/beta
    meta_lr2: float = 5e-3  # the head's initial weights
    base_lr: float = 0.01  # inner loop on the head
    update_step: int = 50
    max_epoch: int = 200
    num_batch: int = 50
    step_size: int = 20
    gamma: float = 0.5
    way: int = 2  # classes per task as the seed counts them: background + object (1: alias)
    shot: int = 3
    teshot: int = 1
    train_query: int = 1
    val_query: int = 1
    test_query: int = 1
    init_weights: str | None = None
    eval_weights: str | None = None
    pre_max_epoch: int = 200
    pre_batch_size: int = 16
    pre_lr: float = 0.1
    pre_gamma: float = 0.2
    pre_step_size: int = 20
    pre_custom_weight_decay: float = 5e-4
    pre_custom_momentum: float = 0.9
    dataset: str = "Fewshot"  # pre-training data: Fewshot (pooled FSS classes), COCO, COCOStuff
    dataset_dir: str | None = None  # root of the COCO / COCO-Stuff dataset
    pre_init_weights: str | None = None  # .weights.h5 the pre-training starts from
    meta_label: str = "exp1"  # the seed's run label, recorded in config.json

    def __post_init__(self):
        _check(self.phase in ("pre_train", "meta_train", "meta_eval"),
               f"--phase must be pre_train, meta_train or meta_eval. Received: {self.phase!r}")
        _check(self.way in (1, 2), f"--way counts the classes of a task, background included: "
                                   f"FSS-1000 tasks are background + object, so --way must be 2 "
                                   f"(1 is accepted as an alias). Received: {self.way}")
        _check(self.dataset in ("Fewshot", "COCO", "COCOStuff"),
               f"--dataset must be Fewshot, COCO or COCOStuff. Received: {self.dataset!r}")
        _check(self.dataset == "Fewshot" or self.dataset_dir is not None,
               f"--dataset {self.dataset} needs --dataset_dir DIR (the dataset's root folder)")
        for flag in ("update_step", "max_epoch", "num_batch", "step_size", "shot", "teshot",
                     "train_query", "val_query", "test_query", "pre_max_epoch",
                     "pre_batch_size", "pre_step_size"):
            _check(getattr(self, flag) >= 1, f"--{flag} must be >= 1. "
                                             f"Received: {getattr(self, flag)}")


@dataclass(frozen=True)
class DeviceConfig:
    """Where and in which precision the meta-learner runs."""

    distribute: str = "none"  # none | mirrored | multi_worker
    num_replicas: int = 1  # local replicas (mirrored: GPUs, or logical CPUs on a CPU machine)
    mixed_precision: str = "none"  # none | bfloat16 | float16 (variables stay float32)
    jit_compile: str = "auto"  # auto (on with a GPU, off on CPU) | on | off

    def __post_init__(self):
        _check(self.distribute in ("none", "mirrored", "multi_worker"),
               f"--distribute must be none, mirrored or multi_worker. "
               f"Received: {self.distribute!r}")
        _check(self.num_replicas >= 0 if self.distribute == "mirrored" else self.num_replicas >= 1,
               f"--num_replicas must be >= 1 (0 = every GPU, with --distribute mirrored). "
               f"Received: {self.num_replicas}")
        _check(self.mixed_precision in ("none", "bfloat16", "float16"),
               f"--mixed_precision must be none, bfloat16 or float16. "
               f"Received: {self.mixed_precision!r}")
        _check(self.jit_compile in ("auto", "on", "off"),
               f"--jit_compile must be auto, on or off. Received: {self.jit_compile!r}")
