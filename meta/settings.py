"""Every setting of an init, in one table: its flag and its place in config.json.

An init carries its architecture (`model.*`, what its weights were trained with), its loss
(`loss.*`) and how it adapts (`adapt.*`, a `meta.adaptation.Adaptation`). The table drives:
* the adaptation flags of `args.py` (generated from its `adapt.*` rows and the field metadata);
* the command line's overrides of an init (`--fine-tune-task`, `--serve`, `--export`: a typed
  flag overrides its setting) and the labels in their messages;
* reading a config.json (`read_config`, which also reads the layouts earlier versions wrote,
  see `upgrade`) and writing one (the same paths, `dataclasses.asdict` of the run's config).

A setting keeps its name from here to the function that uses it: `learning_rate` is
`--learning-rate`, `adapt.learning_rate` in config.json, `from_checkpoint(learning_rate=...)`,
`Adaptation.learning_rate` and the compiled step's learning-rate variable.

This module imports no TensorFlow (args.py and mode_flags.py read it).
"""
from __future__ import annotations

import copy
import dataclasses

from meta.adaptation import Adaptation, head_adaptation

# name -> (its flag and the flag's other spellings, or None; its path in config.json)
SETTINGS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    # the architecture: the weights were trained with these
    "model_name": (("--model_name",), "model.model_name"),
    "image_size": (("--image_size",), "model.image_size"),
    "feature_extractor_name": (("--feature_extractor_name",), "model.feature_extractor_name"),
    "rsd": (("--rsd",), "model.rsd"),
    "spatial_pyramid_pooling": (("--spatial_pyramid_pooling",),
                                "model.spatial_pyramid_pooling"),
    "skip_decoding": (("--skip_decoding",), "model.skip_decoding"),
    "disable_rsd_residual_connections": (("--disable_rsd_residual_connections",),
                                         "model.disable_rsd_residual_connections"),
    "n_unet_encoding_stacks": (("--n_unet_encoding_stacks",), "model.n_unet_encoding_stacks"),
    "start_num_feature_maps_power": (("--start_num_feature_maps_power",),
                                     "model.start_num_feature_maps_power"),
    "align_corners": (("--no_align_corners",), "model.align_corners"),
    # the loss
    "loss_name": (("--loss_name",), "loss.loss_name"),
    "label_smoothing": (("--label_smoothing",), "loss.label_smoothing"),
    "l2": (("--l2",), "loss.l2"),
    "l1": (("--l1",), "loss.l1"),
    "darc1": (("--darc1",), "loss.darc1"),
    # the adaptation (meta.adaptation.Adaptation)
    "steps": (("--eval-iters", "--eval_iters"), "adapt.steps"),
    "batch_size": (("--eval-batch", "--eval_batch"), "adapt.batch_size"),
    "learning_rate": (("--learning-rate", "--learning_rate"), "adapt.learning_rate"),
    "sgd": (("--sgd",), "adapt.sgd"),
    "scheduler": (("--learning_rate_scheduler",), "adapt.scheduler"),
    "step_decay_rate": (("--step_decay_rate",), "adapt.step_decay_rate"),
    "decay_after_n_steps": (("--decay_after_n_steps",), "adapt.decay_after_n_steps"),
    "replacement": (("--replacement",), "adapt.replacement"),
    "aug_rate": (("--aug_rate",), "adapt.aug_rate"),
    "augmentation": (("--augmentation",), "adapt.augmentation"),
    "weight_decay": (("--weight-decay", "--weight_decay"), "adapt.weight_decay"),
    "dropout_rate": (("--final_layer_dropout_rate",), "adapt.dropout_rate"),
    "head_only": (None, "adapt.head_only"),
    "adapt_encoder_from_block": (("--adapt_encoder_from_block",),
                                 "adapt.adapt_encoder_from_block"),
    "seed": (("--seed",), "adapt.seed"),
}
NAMES = tuple(SETTINGS)
# What the weights were trained with: an override that differs makes them meaningless.
ARCHITECTURE = tuple(name for name, (_, path) in SETTINGS.items()
                     if path.startswith("model.") and name != "align_corners")


def section(name: str) -> str:
    """The config section a setting lives in: model, loss or adapt."""
    return SETTINGS[name][1].split(".")[0]


def flag(name: str) -> str | None:
    """A setting's flag as messages name it (its first spelling), or None."""
    flags = SETTINGS[name][0]
    return flags[0] if flags else None


def lookup(config: dict, path: str, default=None):
    """The value at a dotted path of a nested dict (default when a key is missing)."""
    value = config
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def read_config(config: dict) -> dict:
    """A config.json as this version writes it, whatever version wrote it (`upgrade`).

    Args:
        config: a parsed config.json (a run's, a checkpoint's, or fine-tuned weights').

    Returns:
        a new dict in this version's layout.
    """
    return upgrade(copy.deepcopy(config))


def flat(config: dict) -> dict:
    """The settings a config.json holds, by name (`read_config` first); missing ones left out."""
    config = read_config(config)
    out = {}
    for name, (_, path) in SETTINGS.items():
        value = lookup(config, path, _MISSING)
        if value is not _MISSING:
            out[name] = tuple(value) if name == "rsd" and value is not None else value
    return out


_MISSING = object()


def upgrade(config: dict) -> dict:
    """Move the layouts earlier versions wrote into this version's, in place.

    Before the one adaptation type, a run's config.json held the adaptation in three places:
    `inner` (the optimizer, its schedule, augmentation: shared by training and evaluation),
    `eval.eval_iters` / `eval.eval_batch_size`, and `model.final_layer_dropout_rate`; the MTL
    phases' test-time adaptation was implied by `mtl.base_lr` / `mtl.update_step`. Fine-tuned
    weights held an `adapt` section already (exact). Runs from before `--augmentation` used
    metaseg's transforms.

    Args:
        config: a parsed config.json.

    Returns:
        config, with `adapt` and `meta.inner` (when it had `inner`), without the old keys.
    """
    inner = config.pop("inner", None)
    evaluation = config.get("eval", {})
    model = config.get("model", {})
    dropout = model.pop("final_layer_dropout_rate", None)
    iters = evaluation.pop("eval_iters", None)
    batch = evaluation.pop("eval_batch_size", None)
    if inner is None and iters is None and batch is None and dropout is None:
        return config  # this version's layout
    inner = inner or {}
    seed = config.get("meta", {}).get("seed", 0)
    flags = {"learning_rate": inner.get("learning_rate"), "sgd": inner.get("sgd"),
             "scheduler": inner.get("learning_rate_scheduler"),
             "step_decay_rate": inner.get("step_decay_rate"),
             "decay_after_n_steps": inner.get("decay_after_n_steps"),
             "replacement": inner.get("replacement"),
             "aug_rate": inner.get("aug_rate", 0.0) if inner.get("augment") else 0.0,
             "augmentation": inner.get("augmentation", "metaseg"),
             "weight_decay": inner.get("weight_decay"), "dropout_rate": dropout, "seed": seed}
    base = Adaptation(**{k: v for k, v in flags.items() if v is not None})
    training = dataclasses.replace(base, steps=inner.get("inner_iters", 8),
                                   batch_size=inner.get("inner_batch_size", 8))
    config.setdefault("meta", {})["inner"] = dataclasses.asdict(training)
    if "adapt" in config:  # fine-tuned weights: their adapt section is exact
        return config
    mtl = config.get("mtl", {})
    if config.get("run", {}).get("mtl"):
        adapt = head_adaptation(base, learning_rate=mtl.get("base_lr", 0.01),
                                steps=mtl.get("update_step", 50))
    else:
        adapt = dataclasses.replace(base, steps=iters if iters is not None else 4,
                                    batch_size=batch if batch is not None else 8)
    config["adapt"] = dataclasses.asdict(adapt)
    return config
