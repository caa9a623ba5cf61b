"""Per-task fine-tuned checkpoints (`--save_fine_tuned_checkpoints`).

As ml4ai/mliis meta_learners/supervised_reptile/supervised_reptile/eval.py saves them.

After a task is adapted in the final evaluation, every model variable (weights, BN statistics) is
written with `storage.checkpoint.save_checkpoint` to

    <root>/<split>/<safe task name>/rep<r>/ckpt-<steps>/ + LAST

so each one is an ordinary metaseg checkpoint: `load_fine_tuned` (or `run_metasegnet.py
--pretrained --checkpoint <that folder>`) loads it back. Its state.json records the task, the
repetition, the steps, the task IoU and the IoU of every query, so a reload can be checked
against what the evaluation measured. The default root is `<checkpoint>/fine_tuned` (the
reference used the system temp dir).
"""
from __future__ import annotations

import os

import keras

from adapt.evaluate import AfterAdapt
from adapt.predictions import safe_name
from storage import checkpoint

DEFAULT_DIR_NAME = "fine_tuned"


def fine_tuned_dir(root: str, split: str, task: str, repetition: int) -> str:
    """Where the adapted weights of one task sample go.

    Args:
        root: --save_fine_tuned_checkpoints_dir (or <checkpoint>/fine_tuned).
        split: "train" | "val" | "test".
        task: class name (made file-name safe).
        repetition: evaluation repetition.

    Returns:
        the checkpoint directory of that task sample.
    """
    return os.path.join(root, split, safe_name(task), f"rep{repetition}")


def make_checkpoint_saver(model: keras.Model, root: str, split: str, config_json: str
                          ) -> AfterAdapt:
    """An `after_adapt` hook that saves the adapted model of every evaluated task.

    Args:
        model: the model the inner loop adapts.
        root: root directory of the fine-tuned checkpoints.
        split: label of the evaluated split.
        config_json: the run's resolved config (stored with every checkpoint).

    Returns:
        hook(name, repetition, episode, predicted, score).
    """
    def save(name, repetition, episode, predicted, score):
        del episode, predicted
        checkpoint.save_checkpoint(
            fine_tuned_dir(root, split, name, repetition), score.steps_taken,
            {"model": list(model.variables)}, rng_state=None, config_json=config_json, keep=None,
            extra={"kind": "fine_tuned", "task": name, "split": split,
                   "repetition": int(repetition), "steps": int(score.steps_taken),
                   "iou": score.iou, "query_ious": [float(x) for x in score.ious]})
    return save


def load_fine_tuned(model: keras.Model, path: str) -> dict:
    """Load a fine-tuned checkpoint into a model built with the same flags.

    Args:
        model: the model.
        path: a task sample's directory (or its ckpt-<steps> folder).

    Returns:
        the checkpoint's state (task, repetition, steps, iou, query_ious, ...).
    """
    return checkpoint.load_checkpoint(path, {"model": list(model.variables)})


def combine_hooks(*hooks: AfterAdapt | None) -> AfterAdapt | None:
    """One after_adapt hook calling each given hook in order (None when none is given).

    Args:
        hooks: hooks or None.

    Returns:
        the combined hook, or None.
    """
    active = [h for h in hooks if h is not None]
    if not active:
        return None

    def combined(*args):
        for hook in active:
            hook(*args)
    return combined
