"""Shared benchmark plumbing: fake classes, the machine's load, and the JSON next to the table."""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from data.tasks import ClassData
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from models.build import build_model
from models.config import LossConfig, ModelConfig
from models.losses import make_loss


def fake_class(name: str, size: int, n: int, rng: np.random.Generator) -> ClassData:
    """A class of n random images with blobby random masks (speed only, nothing to learn)."""
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    masks = (rng.random((n, size, size)) < 0.3).astype(np.uint8)
    return ClassData(name=name, images=images, masks=masks)


PAPER_SGD = Adaptation(sgd=True, learning_rate=5e-4)  # the paper's optimizer (ml4ai/mliis run.sh)


def b0_loop(image_size: int) -> InnerLoop:
    """EfficientLab-B0 `--rsd 2 4` in an SGD inner loop (lr 5e-4) on the paper's bce_dice loss,
    able to augment."""
    model = build_model(ModelConfig(image_size=image_size, rsd=(2, 4)))
    return InnerLoop(model, make_loss(LossConfig(loss_name="bce_dice"), model), PAPER_SGD,
                     augment=True)


def load() -> str:
    """The 1/5/15-minute load averages and the core count, for the report."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def write_json(path: str, payload: dict) -> None:
    """Write the benchmark's numbers (with machine and load) as JSON; print where."""
    payload = {"machine": platform.platform(), "load": load(),
               "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    print(f"numbers written to {path}")
