"""The inner loop's augmentations by `--augmentation` name; each maps
(images, masks, aug_rate, seed) -> (images, masks) in-graph (see its module)."""
from __future__ import annotations

from typing import Callable

from data.augment import augment_batch
from data.paper_augment import paper_augment_batch

AUGMENTATIONS: dict[str, Callable] = {"paper": paper_augment_batch, "metaseg": augment_batch}


def augmentation_fn(name: str) -> Callable:
    """The batch augmentation called `name` ("paper" or "metaseg").

    Raises:
        ValueError: for an unknown name.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"--augmentation must be one of {tuple(AUGMENTATIONS)}. "
                         f"Received: {name!r}")
    return AUGMENTATIONS[name]
