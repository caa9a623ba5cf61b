"""Converted shards -> one in-memory `ClassData` per class (a meta-learning task).

FSS-1000 is small (10,000 pairs, ~2 GiB as uint8 at 224 px), so every class is decoded once into
numpy arrays and episodes are sliced from memory; this replaces the reference's per-task tf.data
iterators, whose "first n records in write order" sampling made 1-shot evaluation always use the
same 6 of 10 images (ml4ai/mliis meta_learners/metaseg.py).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from data import paper_shards
from data.tfrecord import parse_pair, read_manifest

_DECODE_BATCH = 256


@dataclass(frozen=True)
class ClassData:
    """All image/mask pairs of one class.

    Attributes:
        name: class folder name, e.g. "bus".
        images: uint8 (n, S, S, 3) RGB.
        masks: uint8 (n, S, S), values exactly {0, 1} (1 = foreground).
    """

    name: str
    images: np.ndarray
    masks: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"ClassData {self.name!r}: images must be uint8 (n,S,S,3). "
                             f"Received: {self.images.dtype} {self.images.shape}")
        if self.masks.shape != self.images.shape[:3] or self.masks.dtype != np.uint8:
            raise ValueError(f"ClassData {self.name!r}: masks must be uint8 {self.images.shape[:3]}. "
                             f"Received: {self.masks.dtype} {self.masks.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


FORMATS = {"paper": "the paper's per-class shards (<class>.tfrecord.gzip, no manifest.json)",
           "metaseg": "metaseg shards (manifest.json)"}


def data_format(tfrecord_dir: str) -> str:
    """Which reader a --data-dir takes: "paper" (per-class `.tfrecord.gzip`, no manifest) or
    "metaseg" (our converter's manifest.json + shards; also every malformed folder, whose error
    then comes from the manifest check)."""
    return "paper" if paper_shards.is_paper_format(tfrecord_dir) else "metaseg"


def recorded_split(tfrecord_dir: str) -> dict | None:
    """The class split the converter recorded in manifest.json (seed folders), else None.

    The paper's shards carry no manifest, hence no recorded split.
    """
    if data_format(tfrecord_dir) == "paper":
        return None
    return read_manifest(tfrecord_dir).get("split")


def load_tasks(tfrecord_dir: str, image_size: int | None = None,
               fp_k: bool = False) -> dict[str, ClassData]:
    """Decode every shard of a converted dataset into per-class uint8 arrays.

    Args:
        tfrecord_dir: directory written by `fss_1000_image_to_tfrecord.py` (manifest.json + shards),
            or a folder of the paper's shards (`data.paper_shards`); told apart by `data_format`.
        image_size: expected image side; None accepts the manifest's size.
        fp_k: the paper's shards of the FP-k experiment: each FP-k class the union of its
            synonyms' files (--fp_k_test_set; `data.paper_shards.class_files`).

    Returns:
        dict class name -> ClassData, keys sorted; within a class pairs keep the converter's order
        (natural order of the file stems). The arrays are read-only views of one buffer.

    Raises:
        FileNotFoundError: missing directory, manifest or shard.
        ValueError: image_size differs from the converted size, or the shards disagree with the
            manifest.
    """
    if data_format(tfrecord_dir) == "paper":
        tasks = {}
        for name, (images, masks) in paper_shards.load_paper_shards(tfrecord_dir, image_size,
                                                                    fp_k).items():
            images.flags.writeable = False
            masks.flags.writeable = False
            tasks[name] = ClassData(name=name, images=images, masks=masks)
        return tasks
    manifest = read_manifest(tfrecord_dir)
    size = int(manifest["image_size"])
    if image_size is not None and int(image_size) != size:
        raise ValueError(
            f"--image_size {image_size} does not match {tfrecord_dir!r}, which was converted at "
            f"{size} px. Pass --image_size {size} or re-run fss_1000_image_to_tfrecord.py with "
            f"--image_size {image_size}.")
    paths = [os.path.join(tfrecord_dir, s["file"]) for s in manifest["shards"]]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Shard {path!r} listed in the manifest is missing. "
                                    f"Re-run the converter.")

    def parse(serialized):
        return parse_pair(serialized, size)

    # Shards are read in order (no interleaving): the converter writes classes contiguously, so
    # each class becomes a zero-copy slice of one preallocated array.
    dataset = (tf.data.TFRecordDataset(paths)
               .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(_DECODE_BATCH)
               .prefetch(2))
    total = int(manifest["num_pairs"])
    images = np.empty((total, size, size, 3), np.uint8)
    masks = np.empty((total, size, size), np.uint8)
    names: list[str] = []
    try:
        for batch in dataset.as_numpy_iterator():
            n = len(batch["class_name"])
            if len(names) + n > total:
                raise ValueError(f"Shards in {tfrecord_dir!r} hold more pairs than manifest.json "
                                 f"says ({total}). Re-run the converter.")
            images[len(names):len(names) + n] = batch["image"]
            masks[len(names):len(names) + n] = batch["mask"]
            names += [raw.decode("utf-8") for raw in batch["class_name"]]
    except tf.errors.OpError as e:
        raise ValueError(f"Corrupt shard in {tfrecord_dir!r}: {e.message.splitlines()[0]}. "
                         f"Re-run the converter.") from e

    counts = dict(Counter(names))
    expected = {name: int(n) for name, n in manifest["classes"].items()}
    if counts != expected or len(names) != total:
        diff = sorted(set(counts.items()) ^ set(expected.items()))
        raise ValueError(f"Shards in {tfrecord_dir!r} disagree with manifest.json "
                         f"(class, count) differences: {diff[:10]}. Re-run the converter.")
    if masks.max(initial=0) > 1:  # guards against shards from a foreign writer
        raise ValueError(f"{tfrecord_dir!r} has mask values > 1; re-run the converter.")
    # Read-only: every episode copies out of these, so a stray in-place op cannot corrupt a class.
    images.flags.writeable = False
    masks.flags.writeable = False
    name_array = np.asarray(names)
    tasks = {}
    for name in sorted(counts):
        index = np.flatnonzero(name_array == name)
        if index[-1] - index[0] + 1 == len(index):  # contiguous: a view, no copy
            rows = slice(int(index[0]), int(index[-1]) + 1)
        else:
            rows = index
        tasks[name] = ClassData(name=name, images=images[rows], masks=masks[rows])
    return tasks


def pool_classes(tasks: Mapping[str, ClassData], names: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """All image/mask pairs of the given classes in one array each (supervised baselines).

    Args:
        tasks: class name -> ClassData.
        names: the classes to pool (the meta-train split).

    Returns:
        (images uint8 (N,S,S,3), masks uint8 (N,S,S)).
    """
    if not names:
        raise ValueError("Supervised training on pooled classes needs at least one meta-train "
                         "class; the split is empty.")
    return (np.concatenate([tasks[n].images for n in names]),
            np.concatenate([tasks[n].masks for n in names]))
