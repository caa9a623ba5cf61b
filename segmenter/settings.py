"""The settings of an init (`meta.settings`' table): read from its files, overridden by name.

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
from meta.adaptation import Adaptation
from meta.settings import ARCHITECTURE, NAMES, flat, section
from models.config import LossConfig, ModelConfig
from segmenter.inits import PAPER_SOURCE, Init

DEFAULT = "default"
OVERRIDE = "given"


@dataclass(frozen=True)
class Settings:
    """An init's model, loss and adaptation settings, and where each came from.

    Attributes:
        model: the network (built with `models.build.build_model`).
        loss: the adaptation loss.
        adapt: how `fit` adapts it.
        sources: setting name -> its source ("config.json of ...", "given", "default", ...).
    """

    model: ModelConfig
    loss: LossConfig
    adapt: Adaptation
    sources: Mapping[str, str]

    def value(self, name: str):
        """The value of one setting by its name (`meta.settings.SETTINGS`)."""
        return getattr(getattr(self, section(name)), name)

    def lines(self) -> list[str]:
        """`name = value (source)` for every setting, for logs and the page."""
        return [f"{name} = {self.value(name)!r} ({self.sources.get(name, DEFAULT)})"
                for name in NAMES]

    def to_config(self) -> dict:
        """A config.json that `from_checkpoint` and `--pretrained --checkpoint` both read (the
        table's paths, as a run's config.json has them)."""
        return {"model": dataclasses.asdict(self.model), "loss": dataclasses.asdict(self.loss),
                "adapt": dataclasses.asdict(self.adapt)}


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
    values = flat(init.config)
    if init.kind == "mtl_pre_train":
        values["model_name"] = "unet"  # pre-training trains the plain U-Net
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
    return from_values(values, sources)


def from_values(values: Mapping, sources: Mapping[str, str]) -> Settings:
    """Settings from flat values (missing ones take their defaults) and their sources.

    Args:
        values: setting name -> value.
        sources: setting name -> where it came from.

    Returns:
        Settings.

    Raises:
        UserError: a bad value, naming the setting.
    """
    parts = {part: {name: value for name, value in values.items() if section(name) == part}
             for part in ("model", "loss", "adapt")}
    try:
        model, loss = ModelConfig(**parts["model"]), LossConfig(**parts["loss"])
    except ValueError as e:  # ModelConfig names the flag; the setting is the same word
        raise UserError(str(e)) from e
    return Settings(model=model, loss=loss, adapt=Adaptation(**parts["adapt"]),
                    sources=dict(sources))


def shown(value) -> str:
    """A setting's value as typed on a command line (a tuple as its items, e.g. `2 4`)."""
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "(none)"
    return str(value)

