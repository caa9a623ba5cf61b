"""Writes shards in the paper's format with the paper's converter's exact bytes (for the tests).

As ml4ai/mliis data/fss_1000_image_to_tfrecord.py: per class folder, the masks `*.png` with a
`.jpg` of the same stem, shuffled, pairs not 224 px skipped; each record a tf.train.Example with
`image` = the decoded JPEG's raw uint8 bytes and `mask` = the raw bytes of the PNG's first
channel, into `<class>.tfrecord.gzip` through a GZIP TFRecordWriter. The images are decoded by
Pillow, the library imageio's `imread` uses for JPEG and PNG.
"""
import glob
import os
import random

import numpy as np
import tensorflow as tf
from PIL import Image

SIZE = 224


def paper_record(image: np.ndarray, mask: np.ndarray) -> bytes:
    """One serialized record: raw uint8 image (224,224,3) and mask (224,224) bytes."""
    def feature(array):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[array.tobytes()]))
    return tf.train.Example(features=tf.train.Features(
        feature={"image": feature(image), "mask": feature(mask)})).SerializeToString()


def write_paper_shard(path: str, records) -> str:
    """Write serialized records into one GZIP TFRecord file."""
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for record in records:
            writer.write(record)
    return path


def convert_like_the_paper(fss_dir: str, out_dir: str, seed: int = 0) -> dict:
    """Convert an FSS-1000-layout folder into the paper's format.

    Returns:
        {class: number of records written}.
    """
    os.makedirs(out_dir, exist_ok=True)
    shuffle = random.Random(seed).shuffle
    written = {}
    for task in sorted(glob.glob(os.path.join(fss_dir, "*/"))):
        pairs = [(m[:-4] + ".jpg", m) for m in glob.glob(os.path.join(task, "*.png"))
                 if os.path.exists(m[:-4] + ".jpg")]
        shuffle(pairs)
        records = []
        for image_path, mask_path in pairs:
            image = np.asarray(Image.open(image_path))
            mask = np.asarray(Image.open(mask_path))
            if image.shape[:2] != (SIZE, SIZE) or mask.shape[:2] != (SIZE, SIZE):
                continue
            records.append(paper_record(image, mask[:, :, 0] if mask.ndim > 2 else mask))
        name = os.path.basename(task.rstrip("/"))
        write_paper_shard(os.path.join(out_dir, name + ".tfrecord.gzip"), records)
        written[name] = len(records)
    return written
