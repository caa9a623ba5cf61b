"""The on-disk format shared by the converter (writer) and `data.tasks` (reader).

A converted dataset is one directory holding TFRecord shards and a `manifest.json`:

    <tfrecord_dir>/manifest.json
    <tfrecord_dir>/fss-00000-of-00004.tfrecord   (uncompressed: JPEG/PNG bytes do not compress)

Each record is a `tf.train.Example` with features
    image       bytes   JPEG (RGB, image_size x image_size)
    mask        bytes   PNG, one channel, values exactly {0, 1}
    class_name  bytes   UTF-8 class folder name, e.g. "thor's_hammer"
    image_id    bytes   the file stem inside the class folder, e.g. "7"
    height      int64   == image_size
    width       int64   == image_size
Unlike the reference (one raw-uint8 file per class, ml4ai/mliis data/fss_1000_image_to_tfrecord.py)
the class name travels
in every record, so shards can mix classes and the loader needs no file-name conventions.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

FORMAT_NAME = "metaseg-fss-tfrecord"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string),
    "class_name": tf.io.FixedLenFeature([], tf.string),
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
}


def shard_name(index: int, num_shards: int) -> str:
    """File name of one shard.

    Args:
        index: 0-based shard index.
        num_shards: total number of shards.

    Returns:
        e.g. "fss-00002-of-00010.tfrecord".
    """
    return f"fss-{index:05d}-of-{num_shards:05d}.tfrecord"


def serialize_pair(image_jpeg: bytes, mask_png: bytes, class_name: str, image_id: str,
                   size: int) -> bytes:
    """Encode one image/mask pair as a serialized `tf.train.Example`.

    Args:
        image_jpeg: JPEG bytes of the RGB image (size x size).
        mask_png: PNG bytes of the {0,1} mask (size x size).
        class_name: class folder name.
        image_id: file stem of the pair inside its class folder.
        size: image side in pixels.

    Returns:
        The serialized Example.
    """
    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    example = tf.train.Example(features=tf.train.Features(feature={
        "image": _bytes(image_jpeg),
        "mask": _bytes(mask_png),
        "class_name": _bytes(class_name.encode("utf-8")),
        "image_id": _bytes(image_id.encode("utf-8")),
        "height": _int(size),
        "width": _int(size),
    }))
    return example.SerializeToString()


def parse_pair(serialized: tf.Tensor, size: int) -> dict[str, tf.Tensor]:
    """Decode one serialized Example (usable inside `tf.data.Dataset.map`).

    Args:
        serialized: scalar string tensor.
        size: expected image side; a record of another size fails at run time.

    Returns:
        dict with "image" uint8 (size,size,3), "mask" uint8 (size,size) in {0,1},
        "class_name" and "image_id" string scalars.
    """
    record = tf.io.parse_single_example(serialized, FEATURES)
    # INTEGER_ACCURATE (libjpeg's islow DCT) decodes bit-identically to PIL; TF's default fast
    # DCT differs by ~1 grey level on average.
    image = tf.io.decode_jpeg(record["image"], channels=3, dct_method="INTEGER_ACCURATE")
    mask = tf.io.decode_png(record["mask"], channels=1)[..., 0]
    return {
        "image": tf.ensure_shape(image, (size, size, 3)),
        "mask": tf.ensure_shape(mask, (size, size)),
        "class_name": record["class_name"],
        "image_id": record["image_id"],
    }


def read_manifest(tfrecord_dir: str) -> dict:
    """Read and check `manifest.json` of a converted dataset.

    Args:
        tfrecord_dir: directory written by `fss_1000_image_to_tfrecord.py`.

    Returns:
        The manifest dict (keys: format, format_version, image_size, classes, num_pairs, shards, ...).

    Raises:
        FileNotFoundError: the directory or its manifest is missing.
        ValueError: the manifest is not a metaseg manifest of a supported version.
    """
    if not os.path.isdir(tfrecord_dir):
        raise FileNotFoundError(
            f"TFRecord directory not found: {tfrecord_dir!r}. Create it with "
            f"`python fss_1000_image_to_tfrecord.py --input_dir <FSS folder> "
            f"--tfrecord_dir {tfrecord_dir}`.")
    path = os.path.join(tfrecord_dir, MANIFEST_NAME)
    if not os.path.isfile(path) and _holds_images(tfrecord_dir):
        shards = f"{os.path.normpath(tfrecord_dir)}_shards"
        raise FileNotFoundError(
            f"{tfrecord_dir!r} holds images (class folders of .jpg and .png), not shards: convert "
            f"them first, into a new folder: python fss_1000_image_to_tfrecord.py --input_dir "
            f"{tfrecord_dir} --tfrecord_dir {shards}, then pass --data-dir {shards}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} is missing: {tfrecord_dir!r} was not written by fss_1000_image_to_tfrecord.py "
            f"(or the conversion did not finish), and it holds no <class>.tfrecord.gzip files of "
            f"the paper's format either. Re-run the converter into it.")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Cannot read manifest {path!r}: {e}. Re-run the converter.") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"{path!r} is not a metaseg manifest (not a JSON object). Re-run the "
                         f"converter.")
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; "
            f"this code reads {FORMAT_NAME!r} version {FORMAT_VERSION}. Re-run the converter.")
    problem = _field_problem(manifest)
    if problem:
        raise ValueError(f"{path!r} is damaged: {problem}. Re-run the converter.")
    return manifest


_MAX_SIDE, _MAX_PAIRS = 4096, 10**7  # far beyond FSS-1000 (224 px, 10,000 pairs)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _holds_images(folder: str) -> bool:
    """Whether `folder` looks like the converter's input: class folders of images."""
    try:
        for entry in os.scandir(folder):
            if entry.is_dir() and any(name.lower().endswith(_IMAGE_SUFFIXES)
                                      for name in os.listdir(entry.path)):
                return True
    except OSError:
        return False
    return False


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _field_problem(manifest: dict) -> str | None:
    """What is missing or absurd in a manifest's fields (None when they are usable)."""
    if not _is_int(manifest.get("image_size"), 8, _MAX_SIDE):
        return f"image_size {manifest.get('image_size')!r} is not an integer in [8, {_MAX_SIDE}]"
    if not _is_int(manifest.get("num_pairs"), 0, _MAX_PAIRS):
        return f"num_pairs {manifest.get('num_pairs')!r} is not an integer in [0, {_MAX_PAIRS}]"
    classes = manifest.get("classes")
    if not isinstance(classes, dict) or not all(
            isinstance(k, str) and _is_int(v, 0, _MAX_PAIRS) for k, v in classes.items()):
        return "classes is not a mapping of class name to pair count"
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and s["file"]
            and os.path.basename(s["file"]) == s["file"] and s["file"] not in (".", "..")
            for s in shards):
        return "shards is not a list of shard file names inside the folder"
    return None
