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

The size S is fixed: the signature declares (None, S, S, 3), and another size is refused when it
runs instead of segmented wrongly. The SavedModel says "this model takes S x S images ... got
H x W"; TFLite, which has no op for a message, fails in its first op (`resize_tensor_input` or
a signature runner given another size): "Given shapes, [1,H,W,3] and [1,S,S,1], are not
broadcastable" (its `[1,S,S,1]` is the size it takes).

An export replaces only an earlier export of this tool (a `.keras` of metaseg's layers, a
SavedModel or `.tflite` with the `images` -> `foreground` signature, or an empty folder); any
other file or folder at the path is the user's and refused (`check_target`) before any work.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import keras
import tensorflow as tf

from errors import UserError
from storage import atomic

FORMATS = ("keras", "saved_model", "tflite")
FILE_NAMES = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite"}
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "foreground"
# A path ending in one of these (in any case) names a file, never a folder to create.
_SUFFIXES = (".keras", ".tflite", ".h5", ".pb", ".onnx", ".zip", ".json", ".npz")
_SAVED_MODEL_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets"}
_SIGNATURE_BYTES = (SIGNATURE.encode(), INPUT_NAME.encode(), OUTPUT_NAME.encode())


def check_target(path: str, format: str, flag: str = "the export path") -> str:  # noqa: A002
    """The file or folder an export to `path` writes, refused (before any work) when it cannot
    be written or would replace something that is not an earlier export of this tool.

    Args:
        path: a folder (it gets model.keras, saved_model/ or model.tflite), or a `.keras` /
            `.tflite` file.
        format: "keras", "saved_model" or "tflite".
        flag: how to name the path in messages (e.g. "--export").

    Returns:
        the target path.

    Raises:
        UserError: an unknown format, a file name of another format, a path that is a file
            where a folder is needed, or a target that holds the user's own files.
    """
    if format not in FORMATS:
        raise UserError(f"export format must be one of {FORMATS}. Received: {format!r}")
    suffix = os.path.splitext(path)[1].lower()
    wanted = os.path.splitext(FILE_NAMES[format])[1]
    if suffix in _SUFFIXES:
        if suffix != wanted:
            raise UserError(f"{flag} {path!r}: format {format} cannot write a {suffix} file; give "
                            f"a folder" + (f", or a file ending in {wanted}" if wanted else "")
                            + ".")
        if format == "keras" and not path.endswith(".keras"):
            fixed = path[:-len(suffix)] + ".keras"
            raise UserError(f"{flag} {path!r}: Keras loads only files whose name ends in "
                            f".keras, in lower case; name it {fixed!r}.")
        target = path
    elif os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a file, not a folder; give a folder (it gets "
                        f"{FILE_NAMES[format]})" + (f" or a file ending in {wanted}" if wanted
                                                     else "") + ".")
    else:
        target = os.path.join(path, FILE_NAMES[format])
    if os.path.lexists(target) and not _earlier_export(target, format):
        raise UserError(f"{flag}: {target!r} exists and is not an export of this tool, so it is "
                        f"left as it is; move it away, or choose another {flag}.")
    atomic.check_writable(os.path.dirname(os.path.abspath(target)), flag)
    return target


def _earlier_export(target: str, format: str) -> bool:  # noqa: A002 (the flag's word)
    """Whether `target` is what an export of this tool wrote there (so it may be replaced)."""
    if os.path.islink(target):
        return False
    if format == "saved_model":
        if not os.path.isdir(target):
            return False
        entries = set(os.listdir(target))
        if not entries:
            return True
        return entries <= _SAVED_MODEL_ENTRIES and "saved_model.pb" in entries and \
            _holds(os.path.join(target, "saved_model.pb"), _SIGNATURE_BYTES)
    if not os.path.isfile(target):
        return False
    if format == "keras":
        try:
            with zipfile.ZipFile(target) as archive:
                return b'"metaseg>' in archive.read("config.json")
        except (OSError, KeyError, zipfile.BadZipFile):
            return False
    return _holds(target, _SIGNATURE_BYTES)


def _holds(path: str, needles) -> bool:
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError:
        return False
    return all(needle in content for needle in needles)


def export(model: keras.Model, path: str, format: str,  # noqa: A002 (the flag's word)
           flag: str = "the export path") -> str:
    """Write `model` in `format`, replacing an earlier export of this tool there whole.

    Args:
        model: float32 (N, S, S, 3) RGB in [0, 255] -> (N, S, S, 2) softmax probabilities.
        path: a folder, which gets `model.keras`, `saved_model/` or `model.tflite`; or, for keras
            and tflite, the file itself (ending in `.keras`, or `.tflite` in any case).
        format: "keras", "saved_model" or "tflite".
        flag: how to name the path in messages (e.g. "--export").
    Returns:
        the path written (the file, or the SavedModel folder).
    Raises:
        UserError: see `check_target`.
        ValueError: a model of another input/output shape.
    """
    target = check_target(path, format, flag)
    size = _image_size(model)
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
    """Keras' ExportArchive with the uint8-images-to-foreground signature, for S x S only."""
    def foreground(images):
        height_width = tf.shape(images)[1:3]
        checked = tf.debugging.assert_equal(
            height_width, tf.constant([size, size]), summarize=2,
            message=f"this model takes {size}x{size} images (uint8 (N, {size}, {size}, 3)); "
                    f"resize them to {size}x{size} first. Received height, width")
        with tf.control_dependencies([checked]):
            pixels = tf.cast(images, tf.int32)
        # TFLite drops the assertion and has no op for a message: adding and taking away a
        # (1, S, S, 1) constant makes its first op refuse any other size (not broadcastable)
        # instead of returning an S x S map for an image of another size.
        ones = tf.ones((1, size, size, 1), tf.int32)
        pixels = (pixels + ones) - ones
        probabilities = model(tf.cast(pixels, tf.float32), training=False)
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
