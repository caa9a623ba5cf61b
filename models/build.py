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
        softmax probabilities (channel 0 background, 1 foreground). With
        `--restore_efficient_net_weights_from`, the EfficientNet layers hold the file's weights.
    """
    keras.utils.set_random_seed(cfg.seed)
    if cfg.model_name == "efficientlab":
        from models.efficientlab import build_efficientlab
        model = build_efficientlab(cfg)
        if cfg.restore_efficient_net_weights_from:
            from models.restore import restore_backbone_weights
            restore_backbone_weights(model, cfg.restore_efficient_net_weights_from,
                                     cfg.feature_extractor_name)
        return model
    if cfg.restore_efficient_net_weights_from:
        raise ValueError("--restore_efficient_net_weights_from applies to --model_name "
                         f"efficientlab only. Received: --model_name {cfg.model_name}")
    from models.unet import build_unet
    return build_unet(cfg, mtl=cfg.model_name == "mtl_unet")
