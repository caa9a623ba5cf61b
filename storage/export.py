"""Write a segmentation model where other tools load it: a `.keras` file, a SavedModel, TFLite.

The model is the one `models.build.build_model` returns: float32 (N, S, S, 3) RGB in [0, 255] to
(N, S, S, 2) softmax probabilities (channel 1 the foreground).
* `keras`: the model itself (`model.save`). Its custom layers are registered Keras classes
  (package "metaseg", with `get_config`), so loading it needs their definitions imported first:
  `models/layers.py` (and `models/mtl.py` for the MTL U-Net); docs/outputs.md says how.
* `saved_model`: a TF SavedModel (Keras' `ExportArchive`) whose signature `serving_default` takes
  `images`, uint8 (N, S, S, 3) RGB, and returns `foreground`, float32 (N, S, S) probabilities: the
  model's channel 1 in inference mode. `tf.saved_model.load` and TF Serving need nothing else.
* `tflite`: that signature converted by `tf.lite.TFLiteConverter` (float32, TFLite built-in ops
  only, so no Flex delegate is needed).
"""
from __future__ import annotations

import os
import tempfile

import keras
import tensorflow as tf

from storage import atomic

FORMATS = ("keras", "saved_model", "tflite")
FILE_NAMES = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite"}
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "foreground"
_SUFFIXES = (".keras", ".tflite", ".h5", ".pb")  # a path ending in one of these names a file


def export(model: keras.Model, path: str, format: str) -> str:  # noqa: A002 (the flag's word)
    """Write `model` in `format`, replacing a previous export there whole.

    Args:
        model: float32 (N, S, S, 3) RGB in [0, 255] -> (N, S, S, 2) softmax probabilities.
        path: a folder, which gets `model.keras`, `saved_model/` or `model.tflite`; or, for keras
            and tflite, the file itself (ending in `.keras` / `.tflite`).
        format: "keras", "saved_model" or "tflite".
    Returns:
        the path written (the file, or the SavedModel folder).
    Raises:
        ValueError: an unknown format, a file name of another format, or a model of another
            input/output shape.
    """
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}. Received: {format!r}")
    size = _image_size(model)
    suffix = os.path.splitext(path)[1]
    if suffix in _SUFFIXES:
        if suffix != os.path.splitext(FILE_NAMES[format])[1]:
            raise ValueError(f"export format {format} cannot write {path!r}: give a folder, or a "
                             f"file ending in {os.path.splitext(FILE_NAMES[format])[1] or '/'}")
        target = path
    else:
        target = os.path.join(path, FILE_NAMES[format])
    writers = {"keras": lambda out: model.save(out),
               "saved_model": lambda out: _write_saved_model(model, size, out),
               "tflite": lambda out: _write_tflite(model, size, out)}
    atomic.write_whole(target, writers[format])
    return target


def _image_size(model: keras.Model) -> int:
    """S of a model mapping (N, S, S, 3) to (N, S, S, 2); ValueError for any other model."""
    inputs, outputs = tuple(model.input_shape), tuple(model.output_shape)
    size = inputs[1] if len(inputs) == 4 else None
    if not (size and inputs == (None, size, size, 3) and outputs == (None, size, size, 2)):
        raise ValueError(f"export takes a model of (None, S, S, 3) images to (None, S, S, 2) "
                         f"probabilities. Received: input {inputs}, output {outputs}")
    return int(size)


def _serving_archive(model: keras.Model, size: int):
    """Keras' ExportArchive with the uint8-images-to-foreground signature."""
    def foreground(images):
        probabilities = model(tf.cast(images, tf.float32), training=False)
        return {OUTPUT_NAME: tf.cast(probabilities[..., 1], tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, foreground, input_signature=[
        tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)])
    return archive


def _write_saved_model(model: keras.Model, size: int, out: str) -> None:
    _serving_archive(model, size).write_out(out, verbose=False)


def _write_tflite(model: keras.Model, size: int, out: str) -> None:
    with tempfile.TemporaryDirectory() as saved:
        _write_saved_model(model, size, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
        flatbuffer = converter.convert()
    with open(out, "wb") as f:
        f.write(flatbuffer)
