"""Exports refuse what they cannot do, and never replace what the user owns: the SavedModel and
TFLite signatures declare their fixed size and refuse another one naming it (instead of returning
a map of the wrong size); an existing file or folder at the export path that an export of this
tool did not write is left as it is, refused before any work; `model.KERAS` is a file, and a
path that is a file where a folder is needed is named."""
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from errors import UserError
from models.build import build_model
from models.config import ModelConfig
from storage.export import check_target, export
from tests.fixtures.folders import file_bytes

SIZE = 32


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(image_size=SIZE, model_name="unet", n_unet_encoding_stacks=2,
                                   start_num_feature_maps_power=2, seed=3))


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {f: export(model, str(root), f) for f in ("saved_model", "tflite")}


def test_the_saved_model_declares_its_size_and_names_it_when_refusing(model, exports):
    serve = tf.saved_model.load(exports["saved_model"]).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, SIZE, SIZE, 3] and spec.dtype == tf.uint8
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(serve(images=tf.constant(images))["foreground"].numpy(),
                               model.predict(images.astype(np.float32), verbose=0)[..., 1],
                               atol=1e-5)
    for height, width in ((2 * SIZE, 2 * SIZE), (SIZE, 2 * SIZE)):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"this model takes {SIZE}x{SIZE} images .* resize them to "
                                 rf"{SIZE}x{SIZE} first. Received height, width.*\[{height} "
                                 rf"{width}\]"):
            serve(images=tf.zeros((1, height, width, 3), tf.uint8))


def test_tflite_refuses_another_size_naming_its_own(model, exports):
    interpreter = tf.lite.Interpreter(model_path=exports["tflite"])
    assert interpreter.get_input_details()[0]["shape_signature"].tolist() == [-1, SIZE, SIZE, 3]
    runner = interpreter.get_signature_runner()
    images = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(runner(images=images)["foreground"],
                               model.predict(images.astype(np.float32), verbose=0)[..., 1],
                               atol=1e-4)
    # A signature runner resizes its input to whatever it is given; so does resize_tensor_input.
    with pytest.raises(Exception, match=rf"not broadcastable.*|.*\[1,{SIZE},{SIZE},1\]"):
        runner(images=np.zeros((1, 2 * SIZE, 2 * SIZE, 3), np.uint8))
    other = tf.lite.Interpreter(model_path=exports["tflite"])
    other.resize_tensor_input(0, [1, 2 * SIZE, 2 * SIZE, 3])
    with pytest.raises(RuntimeError, match=rf"Given shapes, \[1,{2 * SIZE},{2 * SIZE},3\] and "
                                           rf"\[1,{SIZE},{SIZE},1\], are not broadcastable"):
        other.allocate_tensors()


def test_an_export_never_replaces_what_the_user_owns(model, tmp_path):
    users = tmp_path / "mine"
    (users / "saved_model").mkdir(parents=True)
    (users / "saved_model" / "notes.txt").write_text("my own SavedModel notes")
    with zipfile.ZipFile(users / "model.keras", "w") as archive:  # someone else's Keras file
        archive.writestr("config.json", '{"class_name": "Sequential"}')
    (users / "model.tflite").write_bytes(b"TFL3 another model")
    before = file_bytes(users)
    for format in ("saved_model", "keras", "tflite"):
        with pytest.raises(UserError, match=r"--export: .* exists and is not an export of this "
                                            r"tool, so it is left as it is"):
            export(model, str(users), format, "--export")
    assert file_bytes(users) == before
    # A file where a folder is needed, a suffix of another format: named, nothing written.
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(UserError, match=r"--export '.*afile' is a file, not a folder"):
        check_target(str(tmp_path / "afile"), "keras", "--export")
    with pytest.raises(UserError, match=r"format saved_model cannot write a .keras file"):
        check_target(str(tmp_path / "x.keras"), "saved_model", "--export")
    with pytest.raises(UserError, match=r"format keras cannot write a .onnx file"):
        check_target(str(tmp_path / "x.onnx"), "keras", "--export")
    assert sorted(os.listdir(tmp_path)) == ["afile", "mine"]


def test_an_earlier_export_is_replaced_whole_and_a_suffix_is_read_in_any_case(model, tmp_path):
    out = tmp_path / "out"
    for format in ("saved_model", "keras", "tflite"):
        first = export(model, str(out), format)
        assert export(model, str(out), format) == first  # its own earlier export: replaced
    assert sorted(os.listdir(out)) == ["model.keras", "model.tflite", "saved_model"]
    # Keras loads only names ending in .keras: model.KERAS is refused, naming the fix.
    with pytest.raises(UserError, match=r"Keras loads only files whose name ends in .keras, in "
                                        r"lower case; name it '.*model.keras'"):
        export(model, str(tmp_path / "model.KERAS"), "keras")
    path = export(model, str(tmp_path / "model.keras"), "keras")
    assert keras.saving.load_model(path).input_shape == (None, SIZE, SIZE, 3)
    assert os.path.isfile(export(model, str(tmp_path / "small.TFLite"), "tflite"))
    assert sorted(os.listdir(tmp_path)) == ["model.keras", "out", "small.TFLite"]
