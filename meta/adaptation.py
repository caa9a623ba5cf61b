"""How one task is adapted: the one settings type of every adaptation.

Meta-training's inner loop (`MetaConfig.inner`), every test-time adaptation (the final
evaluation, the periodic monitor, UHO, the k-shot curves, the MTL head) and `Segmenter.fit` are
each described by one `Adaptation`, and `meta.inner.adapt` takes it as it is. A field's metadata
holds its help text (the command line's, `meta.settings` gives its flag) and whether it is built
into the compiled inner loop (`LOOP_SETTINGS`: changing one needs a new `InnerLoop`).

Adding a setting: one field here, one row in `meta.settings.SETTINGS`, one line in
docs/flags.md; the flag, config.json, `from_checkpoint(**overrides)` and the command line's
overrides follow from those.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from errors import UserError
from meta.schedules import inner_learning_rate

LR_SCHEDULERS = ("fixed", "constant", "step_decay", "step", "cosine_anneal")
AUGMENTATIONS = ("paper", "metaseg")  # data.augmentations.AUGMENTATIONS


def setting(default, help: str, *, loop: bool = False, choices=None,  # noqa: A002 (argparse's)
            flag_default=None):
    """A field of Adaptation with its help text.

    Args:
        default: the value when nothing sets it.
        help: the flag's help text.
        loop: built into the compiled inner loop (a change needs a new InnerLoop).
        choices: the values the flag accepts.
        flag_default: the flag's default when it differs from the field's (--aug_rate is 0.5,
            used with --augment).

    Returns:
        a dataclasses.field.
    """
    return field(default=default, metadata={"help": help, "loop": loop, "choices": choices,
                                            "flag_default": flag_default})


@dataclass(frozen=True)
class Adaptation:
    """How one task is adapted (the field metadata holds each one's meaning)."""

    steps: int = setting(4, "adaptation steps of each evaluated task (and of your own images); "
                            "0 = use the init as it is")
    batch_size: int | None = setting(8, "examples per adaptation step (None: all of them, as "
                                        "MTL's head steps)")
    learning_rate: float = setting(1e-3, "learning rate of the inner optimizer")
    sgd: bool = setting(False, "plain SGD (default: Adam with beta1 = 0)", loop=True)
    scheduler: str = setting("fixed", "inner learning-rate schedule over a task's steps",
                             choices=LR_SCHEDULERS)
    step_decay_rate: float = setting(0.5, "factor of the step_decay schedule")
    decay_after_n_steps: int = setting(5, "steps between decays of the step_decay schedule")
    replacement: bool = setting(False, "draw each mini-batch independently (with replacement "
                                       "across batches)")
    aug_rate: float = setting(0.0, "with --augment: the probability that an example is "
                                   "augmented in a step", flag_default=0.5)
    augmentation: str = setting("paper", "with --augment: the paper's six transforms (random "
                                         "erase, translate, flip, noise, exposure, rotation) or "
                                         "metaseg's affine warp + colour jitter",
                                loop=True, choices=AUGMENTATIONS)
    weight_decay: float = setting(1.0, "multiply every adapted weight by this before each "
                                       "step (1 = off)", loop=True)
    dropout_rate: float = setting(0.0, "dropout before the head, during training and "
                                       "adaptation")
    head_only: bool = setting(False, "adapt the head alone (MTL's base learner)", loop=True)
    adapt_encoder_from_block: int = setting(
        0, "leave the encoder's stem and blocks before block N as the init has them, in every "
           "adaptation (EfficientNet's blocks 1-5, the U-Net's stacks; meta-training's inner loop "
           "too, so they are not meta-learned); 0 adapts every weight", loop=True)
    seed: int = setting(0, "the one seed every random stream derives from")

    def __post_init__(self):
        # numpy's integers and floats are accepted (and stored as Python's), so a value read
        # from an array or a JSON number works; a bool, a fraction, NaN or inf never does.
        def integer(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise UserError(f"{name} must be a whole number >= {low}. Received: {value!r}")
            object.__setattr__(self, name, int(value))

        def number(name, low, high, *, low_open=False, high_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                    not math.isfinite(value) or value < low or value > high or \
                    (low_open and value == low) or (high_open and value == high):
                span = (f"> {low:g}" if low_open else f">= {low:g}") if high == math.inf else \
                    f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                raise UserError(f"{name} must be a finite number {span}. Received: {value!r}")
            object.__setattr__(self, name, float(value) if not isinstance(value, int) else value)

        integer("steps", 0)
        if self.batch_size is not None:
            integer("batch_size", 1)
        number("learning_rate", 0.0, math.inf, low_open=True)
        number("step_decay_rate", 0.0, math.inf)
        integer("decay_after_n_steps", 1)
        number("aug_rate", 0.0, 1.0)
        number("weight_decay", 0.0, 1.0, low_open=True)
        number("dropout_rate", 0.0, 1.0, high_open=True)
        integer("seed", 0)
        integer("adapt_encoder_from_block", 0)
        for name, allowed in (("scheduler", LR_SCHEDULERS), ("augmentation", AUGMENTATIONS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {allowed}. "
                                f"Received: {getattr(self, name)!r}")

    def batch_for(self, num_examples: int) -> int:
        """The mini-batch size on `num_examples` support examples (None: all of them)."""
        return self.batch_size or num_examples

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of 0-based step `step` (T = steps for cosine annealing)."""
        return inner_learning_rate(step, learning_rate=self.learning_rate,
                                   scheduler=self.scheduler, total_steps=self.steps,
                                   step_decay_rate=self.step_decay_rate,
                                   decay_after_n_steps=self.decay_after_n_steps)

    def loop_settings(self) -> dict:
        """The settings built into a compiled inner loop (LOOP_SETTINGS), by name."""
        return {name: getattr(self, name) for name in LOOP_SETTINGS}


FIELDS = {f.name: f for f in dataclasses.fields(Adaptation)}
LOOP_SETTINGS = tuple(name for name, f in FIELDS.items() if f.metadata["loop"])


def head_adaptation(base: Adaptation, *, learning_rate: float, steps: int) -> Adaptation:
    """Adapt the head alone with full-batch plain SGD and no augmentation (meta-transfer
    learning's base learner; ahirsharan/MTL-Segmentation models/mtl.py).

    Args:
        base: the run's adaptation (its head dropout and seed are kept).
        learning_rate: the head's learning rate (--base_lr).
        steps: the head's steps (--update_step).

    Returns:
        Adaptation.
    """
    return dataclasses.replace(base, learning_rate=learning_rate, steps=steps, batch_size=None,
                               sgd=True, scheduler="fixed", replacement=False, aug_rate=0.0,
                               weight_decay=1.0, head_only=True)
