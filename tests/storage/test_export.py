"""storage.export: each format loads in a fresh Python process that cannot import metaseg, and
predicts what metaseg's own inner loop predicts for the same model and images."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from models.build import build_model
from models.config import ModelConfig
from models.layers import set_dropout_rate
from storage.export import export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64
FLOAT_TOLERANCE = 1e-4  # SavedModel and .keras run TensorFlow's kernels, as metaseg (measured: 0)
TFLITE_TOLERANCE = 1e-4  # TFLite's own float32 kernels sum in another order (measured: 3e-6)

# Runs in a fresh interpreter, cwd = a folder holding only the exports and a copy of
# models/layers.py: metaseg is not importable there.
LOAD_EVERYWHERE = r"""
import importlib.util, json, sys
import numpy as np
import tensorflow as tf
import keras

assert importlib.util.find_spec("run_metasegnet") is None, "metaseg is importable"
images = np.load("images.npy")
out = {}
serve = tf.saved_model.load("exports/saved_model").signatures["serving_default"]
out["saved_model"] = serve(images=tf.constant(images))["foreground"].numpy()
runner = tf.lite.Interpreter(model_path="exports/model.tflite").get_signature_runner()
out["tflite"] = runner(images=images)["foreground"]
try:
    keras.saving.load_model("exports/model.keras")
    bare = "loaded"
except TypeError as e:
    bare = str(e)
# What a user needs: metaseg's layer file, imported once (it registers the classes).
spec = importlib.util.spec_from_file_location("metaseg_layers", "metaseg_layers.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
model = keras.saving.load_model("exports/model.keras")
out["keras"] = model.predict(images.astype("float32"), verbose=0)[..., 1]
np.savez("loaded.npz", **out)
print(json.dumps({"bare_keras_load": bare}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """EfficientLab-B0 --rsd 2 4 at 64 px in the three formats, and metaseg's predictions."""
    root = tmp_path_factory.mktemp("export")
    model = build_model(ModelConfig(image_size=SIZE, rsd=(2, 4), seed=1))
    set_dropout_rate(model, 0.5)  # inference ignores it
    head = model.get_layer("final_layer_weights").kernel
    head.assign(head * 30.0)  # a random head is unsure everywhere; this one spans (0, 1)
    paths = {f: export(model, str(root / "exports"), f) for f in ("keras", "saved_model", "tflite")}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    images[:, 16:48, 16:48] = (230, 40, 40)  # a square, so the probabilities vary
    np.save(root / "images.npy", images)
    shutil.copy(os.path.join(ROOT, "models", "layers.py"), root / "metaseg_layers.py")
    loop = InnerLoop(model, lambda y, p: 0.0, Adaptation())
    expected = loop.predict(images).numpy()[..., 1]  # metaseg's inference-mode prediction
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", LOAD_EVERYWHERE], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = dict(np.load(root / "loaded.npz"))
    return paths, expected, loaded, json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_writes_each_format_in_the_folder(exported, tmp_path):
    paths, _, _, _ = exported
    assert [os.path.basename(p) for p in paths.values()] == \
        ["model.keras", "saved_model", "model.tflite"]
    assert os.path.isfile(os.path.join(paths["saved_model"], "saved_model.pb"))


@pytest.mark.parametrize("format, tolerance", [("saved_model", FLOAT_TOLERANCE),
                                               ("keras", FLOAT_TOLERANCE),
                                               ("tflite", TFLITE_TOLERANCE)])
def test_format_loads_without_metaseg_and_predicts_the_same(exported, format, tolerance):
    _, expected, loaded, _ = exported
    probabilities = loaded[format]
    assert probabilities.shape == expected.shape == (3, SIZE, SIZE)
    assert probabilities.dtype == np.float32
    assert expected.min() < 0.5 < expected.max()  # a mask with both classes to compare
    np.testing.assert_allclose(probabilities, expected, atol=tolerance, rtol=0)
    # the masks agree wherever the probability is further than the tolerance from 0.5
    clear = np.abs(expected - 0.5) > tolerance
    np.testing.assert_array_equal((probabilities > 0.5)[clear], (expected > 0.5)[clear])


def test_keras_file_needs_the_layer_classes(exported):
    _, _, _, report = exported
    assert "ResizeBilinear" in report["bare_keras_load"]  # Keras names the missing class


def test_bad_requests_are_refused(tmp_path):
    model = build_model(ModelConfig(model_name="unet", image_size=32, n_unet_encoding_stacks=1,
                                    start_num_feature_maps_power=1))
    with pytest.raises(ValueError, match="must be one of"):
        export(model, str(tmp_path), "onnx")
    with pytest.raises(ValueError, match="cannot write"):
        export(model, str(tmp_path / "model.h5"), "keras")
    assert export(model, str(tmp_path / "unet.keras"), "keras") == str(tmp_path / "unet.keras")
    assert os.listdir(tmp_path) == ["unet.keras"]  # nothing left of the staging folder
