"""One entry point from a ModelConfig to a Keras model (EfficientLab, U-Net or MTL U-Net)."""
from __future__ import annotations

import keras

from models.config import ModelConfig


def build_model(cfg: ModelConfig) -> keras.Model:
    """Build the network `cfg.model_name` with reproducible initial weights.

    Weight init is seeded by `keras.utils.set_random_seed(cfg.seed)` (Keras' documented switch; it
    also seeds Python's and NumPy's global generators, which metaseg never draws from), so two
    builds from one config start from identical weights.

    Args:
        cfg: the model config.
    Returns:
        keras.Model mapping float32 (None, S, S, 3) RGB in [0, 255] to float32 (None, S, S, 2)
        softmax probabilities (channel 0 background, 1 foreground). Nothing is restored here:
        the caller restores what it needs (`storage.tf1_checkpoint.restore_backbone` for
        `--restore_efficient_net_weights_from`, a checkpoint, ...).
    """
    keras.utils.set_random_seed(cfg.seed)
    if cfg.model_name == "efficientlab":
        from models.efficientlab import build_efficientlab
        return build_efficientlab(cfg)
    from models.unet import build_unet
    return build_unet(cfg, mtl=cfg.model_name == "mtl_unet")
