"""`--fine-tune-task DIR`: fit on the folder's support pairs, segment its queries, write it all.

The folder was read and its output paths checked before (`data.user_task.load_user_task`,
`adapt.own_images.check_outputs`), so a bad input has written nothing. Written here:
`<out_dir>/<stem>_mask.png` (0/255, each query's own size), `<stem>_overlay.png`, and
`summary.json` (the init, every setting with its source, warnings, the foreground fraction of
every query and the IoU of those with a ground-truth mask), swapped in whole; then the adapted
weights (`Segmenter.save`).
"""
from __future__ import annotations

import os

import numpy as np

from adapt import iou
from adapt.own_images import SUMMARY_FORMAT
from adapt.user_outputs import write_user_predictions
from data.user_task import UserTask
from segmenter.api import Segmenter


def segment_folder(seg: Segmenter, task: UserTask, *, out_dir: str, weights_dir: str,
                   progress=None) -> dict:
    """Fit on the support pairs, predict the queries, write masks, overlays, summary, weights.

    Args:
        seg: the loaded init.
        task: the validated folder.
        out_dir: folder for the masks, overlays and summary.json (replaced whole).
        weights_dir: folder for the adapted weights.
        progress: (done, total) callback of the adaptation steps.

    Returns:
        the summary written to summary.json.
    """
    losses = seg.fit(task.support_images, task.support_masks, progress=progress)
    masks = seg.predict(task.query_images)
    queries = []
    for path, mask, truth in zip(task.query_paths, masks, task.query_masks):
        entry = {"query": os.path.basename(path), "height": int(mask.shape[0]),
                 "width": int(mask.shape[1]), "foreground_fraction": float((mask > 0).mean())}
        if truth is not None:
            entry["iou"] = float(iou.iou_per_image((mask > 0)[None], truth[None])[0])
        queries.append(entry)
    scored = [q["iou"] for q in queries if "iou" in q]
    config = seg.settings.to_config()
    summary = {"task": task.name, "num_support": len(task.support_images),
               "steps": int(seg.steps_taken),
               "final_loss": float(losses[-1]) if len(losses) else None,
               "init": seg.init.path if seg.init else None,
               "init_trained_on": seg.init.trained_on() if seg.init else None,
               "schedule": config["adapt"], "model": config["model"], "loss": config["loss"],
               "sources": dict(seg.settings.sources), "warnings": list(seg.warnings),
               "queries": queries, "mean_iou": float(np.mean(scored)) if scored else None,
               "weights": os.path.abspath(weights_dir), "format": SUMMARY_FORMAT}
    write_user_predictions(task, masks, out_dir, summary)
    seg.save(weights_dir, task=task.name,
             support=[os.path.basename(p) for p in task.support_paths])
    return summary
