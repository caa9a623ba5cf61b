"""The model and adaptation settings of an init: read from its files, overridden by name.

Every setting has one flat name (`image_size`, `learning_rate`, `steps`, ...) and a source: the
checkpoint's config.json, the TF1 checkpoint's variables, the paper's run.sh line, a default, or
an override. Overrides of the architecture must equal what the weights were trained with: a
contradiction is refused, naming both values, before any model is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from errors import UserError
from meta.config import AUGMENTATIONS, LR_SCHEDULERS
from models.config import LossConfig, ModelConfig
from segmenter.inits import PAPER_SOURCE, Init

# What the weights were trained with: changing one makes them meaningless.
ARCHITECTURE = ("model_name", "image_size", "feature_extractor_name", "rsd",
                "spatial_pyramid_pooling", "skip_decoding", "disable_rsd_residual_connections",
                "n_unet_encoding_stacks", "start_num_feature_maps_power")
MODEL_SETTINGS = ARCHITECTURE + ("align_corners",)
LOSS_SETTINGS = ("loss_name", "label_smoothing", "l2", "l1", "darc1")
DEFAULT = "default"
OVERRIDE = "given"


@dataclass(frozen=True)
class AdaptSettings:
    """How `fit` adapts the init to the examples (test-time adaptation).

    Attributes:
        learning_rate: lr0 of the inner optimizer.
        steps: adaptation steps (0 = predict with the init as it is).
        batch_size: examples per step; None = all of them in every step (MTL's head steps).
        sgd: plain SGD (else Adam with beta1 = 0).
        aug_rate: probability that an example is augmented in a step (0 = never).
        augmentation: paper | metaseg (the transforms when aug_rate > 0).
        scheduler: learning-rate schedule over the steps.
        step_decay_rate: factor of the step schedule.
        decay_after_n_steps: period of the step schedule.
        replacement: draw each mini-batch independently.
        weight_decay: multiply the adapted weights by this before each step (1 = off).
        dropout_rate: head dropout during adaptation.
        head_only: adapt only the head (MTL: the base learner).
        seed: seeds the mini-batches and augmentations of `fit`.
    """

    learning_rate: float = 1e-3
    steps: int = 20
    batch_size: int | None = 8
    sgd: bool = False
    aug_rate: float = 0.0
    augmentation: str = "paper"
    scheduler: str = "fixed"
    step_decay_rate: float = 0.5
    decay_after_n_steps: int = 5
    replacement: bool = False
    weight_decay: float = 1.0
    dropout_rate: float = 0.0
    head_only: bool = False
    seed: int = 0

    def __post_init__(self):
        checks = ((self.learning_rate > 0, f"learning_rate must be > 0. Received: "
                                           f"{self.learning_rate}"),
                  (self.steps >= 0, f"steps must be >= 0. Received: {self.steps}"),
                  (self.batch_size is None or self.batch_size >= 1,
                   f"batch_size must be >= 1. Received: {self.batch_size}"),
                  (0.0 <= self.aug_rate <= 1.0, f"aug_rate must be in [0, 1]. Received: "
                                                f"{self.aug_rate}"),
                  (self.augmentation in AUGMENTATIONS, f"augmentation must be one of "
                                                       f"{AUGMENTATIONS}. Received: "
                                                       f"{self.augmentation!r}"),
                  (self.scheduler in LR_SCHEDULERS, f"scheduler must be one of {LR_SCHEDULERS}. "
                                                    f"Received: {self.scheduler!r}"),
                  (self.decay_after_n_steps >= 1, f"decay_after_n_steps must be >= 1. "
                                                  f"Received: {self.decay_after_n_steps}"),
                  (0.0 < self.weight_decay <= 1.0, f"weight_decay must be in (0, 1]. "
                                                   f"Received: {self.weight_decay}"),
                  (0.0 <= self.dropout_rate < 1.0, f"dropout_rate must be in [0, 1). "
                                                   f"Received: {self.dropout_rate}"))
        for ok, message in checks:
            if not ok:
                raise UserError(message)


ADAPT_SETTINGS = tuple(f.name for f in dataclasses.fields(AdaptSettings))
NAMES = MODEL_SETTINGS + LOSS_SETTINGS + ADAPT_SETTINGS


@dataclass(frozen=True)
class Settings:
    """An init's model, loss and adaptation settings, and where each came from.

    Attributes:
        model: the network (built with `models.build.build_model`).
        loss: the adaptation loss.
        adapt: the adaptation schedule.
        sources: setting name -> its source ("config.json of ...", "given", "default", ...).
    """

    model: ModelConfig
    loss: LossConfig
    adapt: AdaptSettings
    sources: Mapping[str, str]

    def value(self, name: str):
        """The value of one setting by its flat name."""
        for part in (self.model, self.loss, self.adapt):
            if hasattr(part, name):
                return getattr(part, name)
        raise KeyError(name)

    def lines(self) -> list[str]:
        """`name = value (source)` for every setting, for logs and the page."""
        return [f"{name} = {self.value(name)!r} ({self.sources.get(name, DEFAULT)})"
                for name in NAMES]

    def to_config(self) -> dict:
        """A config.json that `from_checkpoint` and `--pretrained --checkpoint` both read."""
        a = self.adapt
        return {"model": dataclasses.asdict(self.model), "loss": dataclasses.asdict(self.loss),
                "inner": {"sgd": a.sgd, "learning_rate": a.learning_rate,
                          "augment": a.aug_rate > 0, "aug_rate": a.aug_rate,
                          "augmentation": a.augmentation, "learning_rate_scheduler": a.scheduler,
                          "step_decay_rate": a.step_decay_rate,
                          "decay_after_n_steps": a.decay_after_n_steps,
                          "replacement": a.replacement, "weight_decay": a.weight_decay},
                "eval": {"eval_iters": a.steps, "eval_batch_size": a.batch_size},
                "meta": {"seed": a.seed}, "adapt": dataclasses.asdict(a)}


def _from_config(config: dict) -> dict:
    """Flat settings from a run's config.json (a meta-training, joint or fine-tuning run)."""
    model, loss = config.get("model", {}), config.get("loss", {})
    inner, evaluation = config.get("inner", {}), config.get("eval", {})
    values = {k: model[k] for k in MODEL_SETTINGS if k in model}
    if "rsd" in values:  # JSON keeps it as a list
        values["rsd"] = tuple(values["rsd"])
    values.update({k: loss[k] for k in LOSS_SETTINGS if k in loss})
    if "adapt" in config:  # written by Settings.to_config: exact
        values.update(config["adapt"])
        return values
    mapping = {"learning_rate": inner.get("learning_rate"), "sgd": inner.get("sgd"),
               "steps": evaluation.get("eval_iters"),
               "batch_size": evaluation.get("eval_batch_size"),
               "aug_rate": inner.get("aug_rate", 0.0) if inner.get("augment") else 0.0,
               # runs from before --augmentation used metaseg's transforms
               "augmentation": inner.get("augmentation", "metaseg"),
               "scheduler": inner.get("learning_rate_scheduler"),
               "step_decay_rate": inner.get("step_decay_rate"),
               "decay_after_n_steps": inner.get("decay_after_n_steps"),
               "replacement": inner.get("replacement"), "weight_decay": inner.get("weight_decay"),
               "dropout_rate": model.get("final_layer_dropout_rate"),
               "seed": config.get("meta", {}).get("seed")}
    values.update({k: v for k, v in mapping.items() if v is not None})
    return values


def _mtl_adaptation(config: dict) -> dict:
    """MTL's test-time adaptation: the head alone, SGD at base_lr, update_step full-batch steps."""
    mtl = config.get("mtl", {})
    return {"learning_rate": mtl.get("base_lr", 0.01), "steps": mtl.get("update_step", 20),
            "batch_size": None, "sgd": True, "aug_rate": 0.0, "head_only": True,
            "dropout_rate": 0.0, "seed": config.get("meta", {}).get("seed", 0)}


# The paper's evaluation flags (ml4ai/mliis run.sh): --sgd --learning-rate 0.0005 --eval-iters 59
# --eval-batch 8 --loss_name bce_dice --l2 --final_layer_dropout_rate 0.5 --augment --aug_rate 0.5
PAPER_SCHEDULE = {"learning_rate": 0.0005, "steps": 59, "batch_size": 8, "sgd": True,
                  "aug_rate": 0.5, "augmentation": "paper", "scheduler": "fixed",
                  "dropout_rate": 0.5, "loss_name": "bce_dice", "l2": True, "seed": 0}
PAPER_IMAGE_SIZE = 224  # FSS-1000's size, the paper's --image_size


def init_settings(init: Init) -> tuple[dict, dict]:
    """The settings an init carries, flat, and the source of each.

    Args:
        init: the found init.

    Returns:
        (values, sources).
    """
    if init.kind == "tf1":
        arch = init.tf1_architecture
        values = {"model_name": "efficientlab", "image_size": PAPER_IMAGE_SIZE,
                  "feature_extractor_name": arch["feature_extractor_name"], "rsd": arch["rsd"],
                  "skip_decoding": arch["skip_decoding"]}
        sources = {k: "the TF1 checkpoint's variables" for k in values}
        sources["image_size"] = "FSS-1000's 224 px, the paper's --image_size"
        values.update(PAPER_SCHEDULE)
        sources.update({k: PAPER_SOURCE for k in PAPER_SCHEDULE})
        return values, sources
    values = _from_config(init.config)
    if init.kind == "mtl_pre_train":
        values["model_name"] = "unet"  # pre-training trains the plain U-Net
    if init.kind in ("mtl_pre_train", "mtl_meta_train"):
        values.update(_mtl_adaptation(init.config))
    return values, {k: f"config.json of {init.config_path}" for k in values}


def resolve(init: Init, overrides: Mapping, labels: Mapping[str, str] | None = None) -> Settings:
    """The init's settings with the overrides applied (checked before any model is built).

    Args:
        init: the found init.
        overrides: setting name -> value; an architecture value must equal the init's.
        labels: how to name a setting in messages (e.g. its command-line flag).

    Returns:
        Settings.

    Raises:
        UserError: an unknown setting, an architecture contradiction, or a bad value.
    """
    labels = labels or {}
    unknown = sorted(set(overrides) - set(NAMES))
    if unknown:
        raise UserError(f"Unknown setting(s) {unknown}; the settings are: {', '.join(NAMES)}.")
    values, sources = init_settings(init)
    for name, value in overrides.items():
        if name == "rsd" and value is not None:
            value = tuple(value)
        if name in ARCHITECTURE and name in values and value != values[name]:
            raise UserError(f"{labels.get(name, name)} {shown(value)} contradicts the init "
                            f"{init.path} ({name} {shown(values[name])}, "
                            f"{sources[name]}); drop it or use an init trained with it.")
        values[name] = value
        sources[name] = OVERRIDE if name not in labels else f"given ({labels[name]})"
    return _settings(values, sources)


def from_config(config: dict, source: str, overrides: Mapping | None = None,
                override_source: str = OVERRIDE) -> Settings:
    """Settings from a run's resolved config (e.g. the command line's), with overrides.

    Args:
        config: a config.json layout (json.loads(args.Config.to_json())).
        source: the source recorded for its settings.
        overrides: setting name -> value (e.g. UHO's schedule).
        override_source: the source recorded for the overrides.

    Returns:
        Settings.
    """
    values = _from_config(config)
    sources = {k: source for k in values}
    for name, value in (overrides or {}).items():
        values[name], sources[name] = value, override_source
    return _settings(values, sources)


def _settings(values: dict, sources: dict) -> Settings:
    try:
        model = ModelConfig(**{k: values[k] for k in MODEL_SETTINGS if k in values},
                            final_layer_dropout_rate=values.get("dropout_rate", 0.0))
        loss = LossConfig(**{k: values[k] for k in LOSS_SETTINGS if k in values})
    except ValueError as e:  # ModelConfig names the flag; the setting is the same word
        raise UserError(str(e)) from e
    adapt = AdaptSettings(**{k: values[k] for k in ADAPT_SETTINGS if k in values})
    return Settings(model=model, loss=loss, adapt=adapt, sources=dict(sources))


def shown(value) -> str:
    """A setting's value as typed on a command line (a tuple as its items, e.g. `2 4`)."""
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "(none)"
    return str(value)
