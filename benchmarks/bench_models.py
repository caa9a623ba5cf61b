"""Model sizes and CPU speed: parameters, forward and forward+backward ms per step, trace excluded.

    .venv/bin/python benchmarks/bench_models.py [--image_size 128] [--batch 4] [--steps 10]

For each network (EfficientLab-B0 and -B3 with --rsd 2 4, U-Net and MTL U-Net with the default
4 stacks from 32 channels; the MTL U-Net in meta-transfer mode), builds it (random init), traces
* a forward pass in inference mode (`model(x, training=False)`),
* a training step: forward in training mode, bce_dice + L2 loss, gradients, SGD update,
each inside one tf.function (no jit_compile: CPU), runs one warm-up call, then reports the median
of `--steps` timed calls. Prints numbers only; nothing is asserted (speed is not a test).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.build import build_model  # noqa: E402
from models.config import LossConfig, ModelConfig  # noqa: E402
from models.losses import make_loss  # noqa: E402
from models.mtl import set_mtl_mode  # noqa: E402

MODELS = {
    "efficientlab-b0 --rsd 2 4": dict(model_name="efficientlab"),
    "efficientlab-b3 --rsd 2 4": dict(model_name="efficientlab",
                                      feature_extractor_name="efficientnet-b3"),
    "unet": dict(model_name="unet"),
    "mtl_unet (meta_transfer)": dict(model_name="mtl_unet"),
}


def _params(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def _median_ms(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def bench(name: str, kwargs: dict, size: int, batch: int, steps: int) -> dict:
    """Build one model and time its compiled forward pass and training step.

    Args:
        name: label of the row.
        kwargs: ModelConfig fields.
        size: image size.
        batch: images per step.
        steps: timed calls per measurement.
    Returns:
        {"name", "trainable", "total", "trace_s", "forward_ms", "train_ms"}.
    """
    start = time.perf_counter()
    model = build_model(ModelConfig(image_size=size, **kwargs))
    build_s = time.perf_counter() - start
    if kwargs["model_name"] == "mtl_unet":
        set_mtl_mode(model, "meta_transfer")
    loss_fn = make_loss(LossConfig(loss_name="bce_dice", l2=True), model)
    optimizer = keras.optimizers.SGD(learning_rate=1e-4)
    variables = model.trainable_variables
    optimizer.build(variables)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
    y = tf.one_hot((rng.random((batch, size, size)) < 0.3).astype(np.int32), 2)

    @tf.function
    def forward(images):
        return model(images, training=False)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    start = time.perf_counter()
    forward(x).numpy()
    train_step(x, y).numpy()
    trace_s = time.perf_counter() - start
    forward_ms = _median_ms(lambda: forward(x).numpy(), steps)
    train_ms = _median_ms(lambda: train_step(x, y).numpy(), steps)
    assert forward.experimental_get_tracing_count() == 1  # no retrace per call
    assert train_step.experimental_get_tracing_count() == 1
    return {"name": name, "trainable": _params(variables), "total": _params(model.weights),
            "build_s": build_s, "trace_s": trace_s, "forward_ms": forward_ms, "train_ms": train_ms}


def main(argv=None) -> None:
    """Run the benchmark and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    a = p.parse_args(argv)
    print(f"CPU, {a.image_size} px, batch {a.batch}, median of {a.steps} calls, "
          f"TF {tf.__version__} / Keras {keras.__version__}, {os.cpu_count()} cores")
    print(f"{'model':28s} {'trainable':>11s} {'all weights':>12s} {'build s':>8s} {'trace s':>8s} "
          f"{'fwd ms':>8s} {'fwd+bwd ms':>11s}")
    for name in a.models:
        r = bench(name, MODELS[name], a.image_size, a.batch, a.steps)
        print(f"{r['name']:28s} {r['trainable']:>11,d} {r['total']:>12,d} {r['build_s']:>8.1f} "
              f"{r['trace_s']:>8.1f} {r['forward_ms']:>8.1f} {r['train_ms']:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
