"""Where `--fine-tune-task DIR` writes, checked before any work: nothing the user owns is replaced.

The outputs (written by `segmenter.folder`):
* `DIR/predictions/<query stem>_mask.png` (0/255, the query's original size),
  `<query stem>_overlay.png` and `summary.json`, swapped in whole;
* the adapted weights as a metaseg checkpoint in `--fine-tuned-checkpoint` (default
  `DIR/fine_tuned_checkpoint`), loadable with `--pretrained --checkpoint` and by
  `segmenter.from_checkpoint`.
"""
from __future__ import annotations

import json
import os

from errors import UserError
from storage import atomic, checkpoint

DEFAULT_OUT_NAME = "predictions"
DEFAULT_WEIGHTS_NAME = "fine_tuned_checkpoint"
SUMMARY_FORMAT = "metaseg-fine-tune-task"  # marks a predictions folder as ours (summary.json)


def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root + os.sep)


def _refuse_outside_link(path: str, task_dir: str, what: str) -> None:
    if os.path.islink(path) and not _inside(path, task_dir):
        raise UserError(f"{what} {path!r} is a symlink to {os.path.realpath(path)!r}, outside "
                        f"the task folder; remove the link or pass another output path.")


def _is_our_predictions(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and (summary.get("format") == SUMMARY_FORMAT or
                                          {"task", "queries", "schedule"} <= set(summary))


def check_outputs(task_dir: str, out_dir: str, weights_dir: str) -> None:
    """Refuse, before any work, output paths that would replace something the user owns.

    The predictions folder must be new, empty, or one this command wrote (its summary.json);
    the weights folder must be new, empty, or hold only fine-tuned checkpoints (never a
    meta-training run, whose LAST it would redirect). Links out of the task folder are refused.

    Args:
        task_dir: --fine-tune-task DIR.
        out_dir: the predictions folder (DIR/predictions).
        weights_dir: --fine-tuned-checkpoint, or DIR/fine_tuned_checkpoint.

    Raises:
        UserError: naming the path and what to do.
    """
    _refuse_outside_link(out_dir, task_dir, "The predictions folder")
    if os.path.lexists(out_dir):
        if os.path.islink(out_dir) or not os.path.isdir(out_dir):
            raise UserError(f"{out_dir!r} exists and is not a predictions folder written by "
                            f"--fine-tune-task; move it away (it is never replaced).")
        if os.listdir(out_dir) and not _is_our_predictions(out_dir):
            raise UserError(f"{out_dir!r} holds files this command did not write (no "
                            f"summary.json of --fine-tune-task); move them away.")
    if weights_dir == os.path.join(task_dir, DEFAULT_WEIGHTS_NAME):
        _refuse_outside_link(weights_dir, task_dir, "The weights folder")
    check_weights_dir(weights_dir, "--fine-tuned-checkpoint")
    # written after the adaptation: a folder that cannot take them is refused before it
    atomic.check_writable(task_dir, "--fine-tune-task")
    atomic.check_writable(weights_dir, "--fine-tuned-checkpoint")


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
