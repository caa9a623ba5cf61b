"""Frozen configs for the networks and their losses (filled from flags by `args.py`)."""
from __future__ import annotations

from dataclasses import dataclass

MODEL_NAMES = ("efficientlab", "unet", "mtl_unet")
FEATURE_EXTRACTORS = ("efficientnet-b0", "efficientnet-b3")
IMAGENET = "imagenet"  # restore_efficient_net_weights_from value: Keras' ImageNet file, cached
LOSS_NAMES = ("cross_entropy", "bce_dice", "soft_iou", "dice", "ce_dice", "focal", "lovasz")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build and how."""

    model_name: str = "efficientlab"
    image_size: int = 224
    feature_extractor_name: str = "efficientnet-b0"
    rsd: tuple[int, ...] = (2, 4)  # reductions (1-4) with a residual skip decoder; () = none
    spatial_pyramid_pooling: bool = False
    skip_decoding: bool = False
    disable_rsd_residual_connections: bool = False
    align_corners: bool = True  # TF1 align_corners=True bilinear resizes (paper parity)
    n_unet_encoding_stacks: int = 4
    start_num_feature_maps_power: int = 5
    restore_efficient_net_weights_from: str | None = None  # a weights file, or IMAGENET
    seed: int = 0  # weight-init seed
    num_classes: int = 2  # head channels: background + object, or K for multi-class pre-training

    def __post_init__(self):
        _check(self.model_name in MODEL_NAMES,
               f"--model_name must be one of {MODEL_NAMES}. Received: {self.model_name!r}")
        _check(self.feature_extractor_name in FEATURE_EXTRACTORS,
               f"--feature_extractor_name must be one of {FEATURE_EXTRACTORS}. "
               f"Received: {self.feature_extractor_name!r}")
        _check(self.image_size >= 32 and self.image_size % 16 == 0,
               f"--image_size must be a multiple of 16 and >= 32. Received: {self.image_size}")
        _check(all(r in (1, 2, 3, 4) for r in self.rsd) and len(set(self.rsd)) == len(self.rsd),
               f"--rsd takes distinct reductions from 1..4. Received: {self.rsd}")
        _check(1 <= self.n_unet_encoding_stacks <= 6,
               f"--n_unet_encoding_stacks must be in 1..6. Received: {self.n_unet_encoding_stacks}")
        _check(1 <= self.start_num_feature_maps_power <= 8,
               f"--start_num_feature_maps_power must be in 1..8. "
               f"Received: {self.start_num_feature_maps_power}")
        _check(2 <= self.num_classes <= 256,
               f"--num_classes must be in [2, 256]. Received: {self.num_classes}")
        _check(self.model_name == "efficientlab"
               or self.image_size % 2 ** self.n_unet_encoding_stacks == 0,
               f"--image_size {self.image_size} must be divisible by 2**--n_unet_encoding_stacks "
               f"= {2 ** self.n_unet_encoding_stacks} for the U-Net")


@dataclass(frozen=True)
class LossConfig:
    """The training objective: a segmentation loss plus optional regularizers."""

    loss_name: str = "cross_entropy"
    label_smoothing: float = 0.0
    l2: bool = False
    l1: bool = False
    darc1: bool = False

    def __post_init__(self):
        _check(self.loss_name in LOSS_NAMES,
               f"--loss_name must be one of {LOSS_NAMES}. Received: {self.loss_name!r}")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"--label_smoothing must be in [0, 1). Received: {self.label_smoothing}")
