"""Models built once per test session and shared by tests/models (each build costs seconds)."""
import numpy as np
import pytest

from models.build import build_model
from models.config import ModelConfig
from models.layers import set_dropout_rate

SIZE = 64


@pytest.fixture(scope="session")
def b0():
    """EfficientLab-B0 `--rsd 2 4` (the paper's EfficientLab-6-3) at 64 px, head dropout 0.5."""
    model = build_model(ModelConfig(image_size=SIZE, rsd=(2, 4)))
    set_dropout_rate(model, 0.5)
    return model


@pytest.fixture(scope="session")
def images():
    """Two RGB images in [0, 255] at 64 px."""
    return np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="session")
def masks():
    """Two {0,1} masks at 64 px with a foreground square each."""
    m = np.zeros((2, SIZE, SIZE), np.int32)
    m[0, 10:40, 12:50] = 1
    m[1, 30:60, 5:25] = 1
    return m
