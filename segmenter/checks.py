"""What fitting and saving refuse or warn about: a weights folder of another kind, examples
whose mask shows nothing or everything."""
from __future__ import annotations

import os

from errors import UserError
from storage import checkpoint


def check_weights_dir(directory: str, what: str) -> None:
    """Refuse a weights folder that holds something other than fine-tuned weights.

    Args:
        directory: the folder.
        what: how to name it in the message (e.g. "--fine-tuned-checkpoint").

    Raises:
        UserError: it is a file, or a non-empty folder of another kind (e.g. a meta-training
            run, whose LAST it would redirect).
    """
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise UserError(f"{what} {directory!r} is a file; pass a folder (new, or one holding "
                        f"earlier fine-tuned weights).")
    if os.path.isdir(directory) and os.listdir(directory):
        try:
            kind = checkpoint.read_state(directory).get("kind")
        except (FileNotFoundError, ValueError):
            kind = None
        if kind != "fine_tuned":
            raise UserError(f"{what} {directory!r} is not empty and holds no fine-tuned weights "
                            f"(e.g. a meta-training run, whose checkpoints it would mix with); "
                            f"pass a new folder.")


def mask_warnings(masks) -> list[str]:
    """Warnings for examples whose mask is empty or covers the whole image.

    Args:
        masks: {0, 1} masks, one per example.

    Returns:
        one line per such example.
    """
    out = []
    for i, mask in enumerate(masks, 1):
        if not mask.any():
            out.append(f"example {i}'s mask is empty: it shows no object, so it teaches the "
                       f"model that everything is background")
        elif mask.all():
            out.append(f"example {i}'s mask covers the whole image: it teaches the model that "
                       f"everything is the object")
    return out
