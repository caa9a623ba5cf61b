"""Masks written in a format labelling tools and trainers read, by name: the one entry point for
`--mask_format` (PNG masks stay with adapt/user_outputs.py).

    write_masks("coco", folder, {"a.jpg": mask_a, "sub/b.jpg": mask_b}, category="camel")

    coco          <folder>/instances.json       one RLE annotation per image (data.annotations)
    yolo          <folder>/labels/<stem>.txt    one polygon per region; holes come back filled
    label_studio  <folder>/label_studio.json    tasks with brush pre-labels, to import
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from data.annotations import write_coco, write_yolo
from errors import UserError
from data.label_studio_format import label_studio_predictions

MASK_FORMATS = ("coco", "yolo", "label_studio")
COCO_FILE, LABEL_STUDIO_FILE = "instances.json", "label_studio.json"


def write_masks(mask_format: str, folder: str, masks: Mapping[str, np.ndarray],
                category: str) -> list[str]:
    """Write masks in one format into a folder.

    Args:
        mask_format: one of MASK_FORMATS.
        folder: an existing folder.
        masks: image path relative to the images' folder (as the file should name it) -> its
            mask, uint8 {0, 1} (or 0/255) at the image's own size.
        category: the object's name (COCO's category, Label Studio's label).

    Returns:
        the files written.

    Raises:
        UserError: an unknown format.
    """
    if mask_format == "coco":
        return [write_coco(os.path.join(folder, COCO_FILE), masks, category)]
    if mask_format == "yolo":
        return write_yolo(folder, masks)
    if mask_format == "label_studio":
        path = os.path.join(folder, LABEL_STUDIO_FILE)
        with open(path, "w") as f:
            json.dump(label_studio_predictions(masks, category), f)
        return [path]
    raise UserError(f"--mask_format must be one of png, {', '.join(MASK_FORMATS)}. "
                    f"Received: {mask_format!r}")
