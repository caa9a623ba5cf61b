"""The paper's released shards, read as they are: one GZIP TFRecord file per class.

The paper's converter (ml4ai/mliis data/fss_1000_image_to_tfrecord.py) writes
`<tfrecord_dir>/<class>.tfrecord.gzip`, each record a `tf.train.Example` with two bytes features:
`image` = the raw uint8 bytes of a 224x224x3 RGB image and `mask` = the raw uint8 bytes of the
mask's first channel, 224x224, 255 = object. There is no manifest and no class name inside the
records: the class is the file name. A folder of such files and no `manifest.json` is this
format; masks are binarized by the converter's rule (`data.masks.binarize_values`).

The FP-k shards mix FSS-1000 and PASCAL files for one concept (e.g. `airliner` and
`aeroplane_*`). As the reference's `read_fp_k_shot_dataset` (ml4ai/mliis meta_learners/metaseg.py)
reads each FP-k task from the files matching `<synonym>*.tfrecord*` for each of its synonyms, a
folder whose every file matches exactly one FP-k synonym is read as the 5 FP-k classes, each
the union of its files. Any other folder is one class per file (a full FSS-1000 folder holds
`bustard`, which the prefix `bus` would otherwise swallow).
"""
from __future__ import annotations

import glob
import logging
import os

import numpy as np
import tensorflow as tf

from data.masks import binarize_values

log = logging.getLogger(__name__)

SUFFIX = ".tfrecord.gzip"
IMAGE_SIZE = 224  # the paper's converter skips every other size
MANIFEST_NAME = "manifest.json"  # our converter's marker (data.tfrecord)
# The reference's FP-k tasks in its order (a set there), with the synonyms its files use.
FP_K_SYNONYMS = (("airliner", ("airliner", "aeroplane")), ("bus", ("bus",)),
                 ("motorbike", ("motorbike",)), ("potted_plant", ("potted_plant", "pottedplant")),
                 ("television", ("television", "tvmonitor")))
FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
            "mask": tf.io.FixedLenFeature([], tf.string)}
_BATCH = 64


def shard_files(directory: str) -> list[str]:
    """The `*.tfrecord.gzip` files of a folder, sorted by name."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*" + SUFFIX)))


def is_paper_format(directory: str) -> bool:
    """Whether `directory` holds the paper's shards: `<class>.tfrecord.gzip` files, no manifest.

    Args:
        directory: a --data-dir.
    Returns:
        True when it is a folder without `manifest.json` holding at least one such file.
    """
    return (os.path.isdir(directory)
            and not os.path.isfile(os.path.join(directory, MANIFEST_NAME))
            and bool(shard_files(directory)))


def _class_of(path: str) -> str:
    return os.path.basename(path)[:-len(SUFFIX)]


def _fp_k_class(path: str) -> str | None:
    """The FP-k class whose synonym prefixes the file's name (None if none does)."""
    hits = {name for name, synonyms in FP_K_SYNONYMS
            for s in synonyms if os.path.basename(path).startswith(s)}
    return hits.pop() if len(hits) == 1 else None


def class_files(directory: str) -> dict[str, list[str]]:
    """Class name -> its shard files (several only in an FP-k folder), keys sorted.

    Args:
        directory: a folder in the paper's format.
    Returns:
        {class: [paths]}.
    """
    files = shard_files(directory)
    fp_k = {path: _fp_k_class(path) for path in files}
    if files and all(fp_k.values()):
        classes: dict[str, list[str]] = {}
        for path in files:
            classes.setdefault(fp_k[path], []).append(path)
        log.info("%s holds only FP-k files: read as %d FP-k classes", directory, len(classes))
        return dict(sorted(classes.items()))
    return {_class_of(path): [path] for path in files}


def _read_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All records of one shard as uint8 images (n,224,224,3) and raw masks (n,224,224)."""
    image_bytes, mask_bytes = IMAGE_SIZE * IMAGE_SIZE * 3, IMAGE_SIZE * IMAGE_SIZE
    dataset = (tf.data.TFRecordDataset(path, compression_type="GZIP")
               .batch(_BATCH).map(lambda r: tf.io.parse_example(r, FEATURES)))
    images, masks = [], []
    try:
        for batch in dataset.as_numpy_iterator():
            for image, mask in zip(batch["image"], batch["mask"]):
                if len(image) != image_bytes or len(mask) != mask_bytes:
                    raise ValueError(
                        f"Paper shard {path!r}: record {len(images)} has a {len(image)}-byte image "
                        f"and a {len(mask)}-byte mask; the paper's format stores {IMAGE_SIZE}x"
                        f"{IMAGE_SIZE}x3 = {image_bytes} and {IMAGE_SIZE}x{IMAGE_SIZE} = "
                        f"{mask_bytes} bytes. Re-download or re-convert this file.")
                images.append(np.frombuffer(image, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 3))
                masks.append(np.frombuffer(mask, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
    except tf.errors.DataLossError as e:
        raise ValueError(f"Paper shard {path!r} is truncated or corrupt after {len(images)} "
                         f"records ({e.message.splitlines()[0]}). Re-download it.") from e
    except (tf.errors.OpError, UnicodeDecodeError) as e:
        # (TF fails to decode its own message when a parse error quotes the record's bytes)
        reason = e.message.splitlines()[0] if isinstance(e, tf.errors.OpError) else "unparsable"
        raise ValueError(f"Paper shard {path!r}: record {len(images)} is not a tf.train.Example "
                         f"with bytes features 'image' and 'mask' ({reason}). "
                         f"Re-download it.") from e
    if not images:
        raise ValueError(f"Paper shard {path!r} holds no records (an empty class). Re-download it "
                         f"or remove it from the folder.")
    return np.stack(images), np.stack(masks)


def load_paper_shards(directory: str, image_size: int | None = None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every class of a folder in the paper's format.

    Args:
        directory: folder of `<class>.tfrecord.gzip` files (see `is_paper_format`).
        image_size: the run's --image_size; must be 224 (or None).
    Returns:
        {class: (images uint8 (n,224,224,3), masks uint8 (n,224,224) in {0,1})}, keys sorted,
        records in file order (an FP-k class: its files in name order).
    Raises:
        ValueError: --image_size other than 224, or a truncated / corrupt / empty file or a record
            of the wrong byte length (one line naming the file).
    """
    if image_size is not None and int(image_size) != IMAGE_SIZE:
        raise ValueError(f"--image_size {image_size} does not match {directory!r}: the paper's "
                         f"shards hold {IMAGE_SIZE} px images. Pass --image_size {IMAGE_SIZE}.")
    tasks = {}
    for name, paths in class_files(directory).items():
        parts = [_read_file(path) for path in paths]
        images = np.concatenate([p[0] for p in parts])
        masks = binarize_values(np.concatenate([p[1] for p in parts]))
        tasks[name] = (images, masks)
    log.info("read %d classes, %d pairs from the paper's shards in %s", len(tasks),
             sum(len(m) for _, m in tasks.values()), directory)
    return tasks
