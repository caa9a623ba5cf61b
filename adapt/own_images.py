"""`--fine-tune-task DIR`: adapt the meta-learned init to a user's own few labelled images.

The folder is read and validated first (`data.user_task.load_user_task`): a bad input raises
before anything is written. Then the init is adapted on the support pairs with the given
schedule (the flags', or UHO's), the queries are predicted, and the outputs are written:

* `<out_dir>/<query stem>_mask.png` (0/255, the query's original size),
  `<query stem>_overlay.png` and `summary.json` (schedule, foreground fraction per query, and
  the IoU of every query that has a ground-truth `<stem>.png` beside it), swapped in whole;
* the adapted weights as a metaseg checkpoint in `weights_dir` (loadable with `--pretrained
  --checkpoint weights_dir`).

The model's state is restored afterwards, so the same init can serve several folders.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from adapt import iou
from adapt.user_outputs import masks_at_original_size, write_user_predictions
from data.errors import UserError
from data.user_task import UserTask
from meta.inner import AdaptationSchedule, InnerLoop, adapt
from storage import checkpoint

PREDICT_BATCH = 8
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
    if os.path.lexists(weights_dir) and not os.path.isdir(weights_dir):
        raise UserError(f"--fine-tuned-checkpoint {weights_dir!r} is a file; pass a folder "
                        f"(new, or one holding earlier fine-tuned weights).")
    if os.path.isdir(weights_dir) and os.listdir(weights_dir):
        try:
            kind = checkpoint.read_state(weights_dir).get("kind")
        except (FileNotFoundError, ValueError):
            kind = None
        if kind != "fine_tuned":
            raise UserError(f"--fine-tuned-checkpoint {weights_dir!r} is not empty and holds no "
                            f"fine-tuned weights (e.g. a meta-training run, whose checkpoints it "
                            f"would mix with); pass a new folder.")


def predict_foreground(loop: InnerLoop, images: np.ndarray) -> np.ndarray:
    """Foreground probabilities of many images, predicted in small batches (inference mode).

    Args:
        loop: the inner loop.
        images: (n, S, S, 3) uint8.

    Returns:
        float32 (n, S, S).
    """
    parts = [loop.predict(images[i:i + PREDICT_BATCH]).numpy()[..., 1]
             for i in range(0, len(images), PREDICT_BATCH)]
    return np.concatenate(parts)


def fine_tune_user_task(loop: InnerLoop, task: UserTask, schedule: AdaptationSchedule, *,
                        seed: int, out_dir: str, weights_dir: str, config_json: str) -> dict:
    """Adapt on the task's support pairs, write query masks/overlays and the adapted weights.

    Args:
        loop: the inner loop holding the init (restored afterwards).
        task: the validated user task.
        schedule: the adaptation schedule.
        seed: seeds mini-batches and augmentation.
        out_dir: folder for masks, overlays and summary.json (replaced whole).
        weights_dir: checkpoint directory for the adapted weights.
        config_json: the run's resolved config (stored with the weights).

    Returns:
        the summary written to summary.json.
    """
    rng = np.random.default_rng([int(seed), len(task.support_images)])
    loop.full_state.save()
    try:
        result = adapt(loop, task.support_images, task.support_masks, schedule, rng)
        foreground = predict_foreground(loop, task.query_images)
        masks = masks_at_original_size(foreground, task.query_originals)
        queries = []
        for path, mask, truth in zip(task.query_paths, masks, task.query_masks):
            entry = {"query": os.path.basename(path), "height": int(mask.shape[0]),
                     "width": int(mask.shape[1]), "foreground_fraction": float(mask.mean())}
            if truth is not None:
                entry["iou"] = float(iou.iou_per_image(mask[None], truth[None])[0])
            queries.append(entry)
        scored = [q["iou"] for q in queries if "iou" in q]
        summary = {"task": task.name, "num_support": int(len(task.support_images)),
                   "steps": int(result.steps_taken), "final_loss": float(result.losses[-1])
                   if len(result.losses) else None,
                   "schedule": dataclasses.asdict(schedule), "queries": queries,
                   "mean_iou": float(np.mean(scored)) if scored else None,
                   "weights": os.path.abspath(weights_dir), "format": SUMMARY_FORMAT}
        write_user_predictions(task, masks, out_dir, summary)
        checkpoint.save_checkpoint(weights_dir, int(result.steps_taken),
                                   {"model": list(loop.model.variables)}, rng_state=None,
                                   config_json=config_json, keep=None,
                                   extra={"kind": "fine_tuned", "task": task.name,
                                          "support": [os.path.basename(p)
                                                      for p in task.support_paths]})
    finally:
        loop.full_state.restore()
    return summary
