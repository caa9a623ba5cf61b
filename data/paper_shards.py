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
run of the FP-k experiment (--fp_k_test_set, `fp_k=True`) reads every file that exactly one FP-k
synonym prefixes as part of that FP-k class, and says which files it merged. Every other run
reads one class per file (a full FSS-1000 folder holds `bus`, `bustard` and `business_card`,
which the prefix `bus` would otherwise merge).
"""
from __future__ import annotations

import glob
import os

from absl import logging
import numpy as np
import tensorflow as tf

from errors import UserError
from data.masks import binarize_values

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
    """The `*.tfrecord.gzip` entries of a folder, sorted by name."""
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


def class_files(directory: str, fp_k: bool = False) -> dict[str, list[str]]:
    """Class name -> its shard files (several only for the FP-k experiment), keys sorted.

    Args:
        directory: a folder in the paper's format.
        fp_k: read the FP-k classes, each the union of the files its synonyms prefix
            (--fp_k_test_set); otherwise one class per file.
    Returns:
        {class: [paths]}.
    Raises:
        UserError: an entry that is a folder or a broken link, not a shard file.
    """
    files = shard_files(directory)
    for path in files:
        _check_entry(path)
    classes: dict[str, list[str]] = {}
    for path in files:
        fp_k_class = _fp_k_class(path) if fp_k else None
        classes.setdefault(fp_k_class or _class_of(path), []).append(path)
    merged = {name: paths for name, paths in classes.items()
              if len(paths) > 1 or _class_of(paths[0]) != name}
    for name, paths in sorted(merged.items()):
        logging.info(f"--fp_k_test_set: class {name} is read from "
                     f"{', '.join(os.path.basename(p) for p in paths)}")
    return dict(sorted(classes.items()))


def _check_entry(path: str) -> None:
    """Refuse a `.tfrecord.gzip` entry that is not a readable file, saying what it is."""
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"Paper shard {path!r} is a broken symbolic link (to "
                        f"{os.readlink(path)!r}); point it at the downloaded file or remove it.")
    if os.path.isdir(path):
        raise UserError(f"Paper shard {path!r} is a folder, not a shard file; move it out of "
                        f"--data-dir (or put the file it should hold in its place).")


def _gzip_problem(path: str) -> str | None:
    """Why a file named .tfrecord.gzip is not GZIP-compressed (None when it is)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b" or not head:
        return None
    try:  # an uncompressed TFRecord under the paper's name?
        next(iter(tf.data.TFRecordDataset(path)))
    except (tf.errors.OpError, StopIteration):
        return (f"Paper shard {path!r} is not GZIP-compressed (no gzip header) and is no "
                f"TFRecord either: it is not one of the paper's shards. Re-download it or remove "
                f"it from --data-dir.")
    stem = path[:-len(".gzip")]
    return (f"Paper shard {path!r} is an uncompressed TFRecord, but the paper's shards are "
            f"GZIP-compressed: compress it (mv {path} {stem} && gzip -S .gzip {stem}) or "
            f"re-download it.")


def _read_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All records of one shard as uint8 images (n,224,224,3) and raw masks (n,224,224)."""
    image_bytes, mask_bytes = IMAGE_SIZE * IMAGE_SIZE * 3, IMAGE_SIZE * IMAGE_SIZE
    problem = _gzip_problem(path)
    if problem:
        raise UserError(problem)
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


def load_paper_shards(directory: str, image_size: int | None = None, fp_k: bool = False
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every class of a folder in the paper's format.

    Args:
        directory: folder of `<class>.tfrecord.gzip` files (see `is_paper_format`).
        image_size: the run's --image_size; must be 224 (or None).
        fp_k: read the FP-k classes (`class_files`).
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
    for name, paths in class_files(directory, fp_k).items():
        parts = [_read_file(path) for path in paths]
        images = np.concatenate([p[0] for p in parts])
        masks = binarize_values(np.concatenate([p[1] for p in parts]))
        tasks[name] = (images, masks)
    logging.info(f"Read {len(tasks)} classes, {sum(len(m) for _, m in tasks.values())} pairs "
                 f"from the paper's shards in {directory}")
    return tasks
