"""The frozen config of meta-transfer learning (pre-training and the MTL U-Net)."""
from __future__ import annotations

from dataclasses import dataclass

from meta.config import ensure


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
    meta_label: str = "exp1"  # MTL-Segmentation's run label, recorded in config.json

    def __post_init__(self):
        ensure(self.phase in ("pre_train", "meta_train", "meta_eval"),
               f"--phase must be pre_train, meta_train or meta_eval. Received: {self.phase!r}")
        ensure(self.way in (1, 2), f"--way counts the classes of a task, background included: "
                                   f"FSS-1000 tasks are background + object, so --way must be 2 "
                                   f"(1 is accepted as an alias). Received: {self.way}")
        ensure(self.dataset in ("Fewshot", "COCO", "COCOStuff"),
               f"--dataset must be Fewshot, COCO or COCOStuff. Received: {self.dataset!r}")
        ensure(self.dataset == "Fewshot" or self.dataset_dir is not None,
               f"--dataset {self.dataset} needs --dataset_dir DIR (the dataset's root folder)")
        for flag in ("update_step", "max_epoch", "num_batch", "step_size", "shot", "teshot",
                     "train_query", "val_query", "test_query", "pre_max_epoch",
                     "pre_batch_size", "pre_step_size"):
            ensure(getattr(self, flag) >= 1, f"--{flag} must be >= 1. "
                                             f"Received: {getattr(self, flag)}")
