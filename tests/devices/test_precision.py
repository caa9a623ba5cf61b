"""--mixed_precision bfloat16 on CPU: float32 variables, the same first steps as float32."""
import keras
import numpy as np
import pytest

from devices.precision import LOSS_SCALE_FLOAT16, set_precision, use_jit
from meta.adaptation import Adaptation
from meta.inner import InnerLoop, adapt
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks

SCHEDULE = Adaptation(learning_rate=0.05, steps=4, batch_size=4, sgd=True)


def _adapt(mode):
    scale = set_precision(mode)
    try:
        loop = InnerLoop(tiny_model(dropout=0.0), cross_entropy, SCHEDULE, loss_scale=scale)
    finally:
        set_precision("none")  # the policy is global: never leak it into other tests
    task = toy_tasks(1, n=8)["class0"]
    result = adapt(loop, task.images, task.masks, SCHEDULE, np.random.default_rng(0))
    return loop, result


def test_bfloat16_computes_low_precision_keeps_float32_weights_and_tracks_float32():
    loop32, result32 = _adapt("none")
    loop16, result16 = _adapt("bfloat16")
    assert loop16.model.layers[2].compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in loop16.model.trainable_variables)
    assert loop16.predict(np.zeros((1, 32, 32, 3), np.uint8)).dtype == "float32"
    assert result16.losses.dtype == np.float32 and np.isfinite(result16.losses).all()
    # same init, same batches: the first steps' losses stay within bfloat16's ~3 digits
    np.testing.assert_allclose(result16.losses, result32.losses, rtol=2e-2)
    assert result32.losses[-1] < result32.losses[0]  # the steps compared do learn
    moved = [np.abs(a.numpy() - b.numpy()).max()
             for a, b in zip(loop16.variables, loop32.variables)]
    assert max(moved) < 5e-3


def test_float16_scales_the_loss_and_jit_auto_is_off_on_cpu():
    assert set_precision("float16") == LOSS_SCALE_FLOAT16
    assert set_precision("bfloat16") is None
    assert set_precision("none") is None and keras.mixed_precision.global_policy().name == "float32"
    assert use_jit("auto") is False and use_jit("on") is True and use_jit("off") is False
    with pytest.raises(ValueError, match="--mixed_precision"):
        set_precision("int8")
