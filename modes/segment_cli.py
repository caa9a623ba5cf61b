"""The command line of segmenting with one init: `--fine-tune-task DIR --checkpoint INIT`,
`--serve` and `--export` (without --data-dir), and `--fine-tune-task` after UHO.

They load the init through `segmenter` with the settings the init carries; a flag typed on the
command line overrides the init's value (and is printed as such), and one that contradicts the
init's architecture is refused before any model is built.
"""
from __future__ import annotations

import json
import os

from adapt.uho import UHOResult
from adapt.uho_objective import UHO_SETTINGS
from args import Config, build_parser
from errors import UserError
from meta.inner import InnerLoop
from meta.settings import SETTINGS, lookup
from modes.experiments import final_adaptation
from segmenter import settings as settings_lib
from segmenter.api import Segmenter, build, resolve_init
from segmenter.folder import DEFAULT_OUT_NAME, DEFAULT_WEIGHTS_NAME, UserTask, check_outputs, \
    load_user_task
from segmenter.inits import KIND_NAMES, Init, find_init
from segmenter.settings import Settings
from segmenter.tree import check_masks_folder
from storage import lock

def flag_overrides(cfg: Config) -> tuple[dict, dict]:
    """The settings the typed flags override (`meta.settings.SETTINGS`), and each one's flag.

    A typed --augment overrides aug_rate (with --aug_rate's value) as --aug_rate does.

    Args:
        cfg: the run config (its `run.given_flags`, the values from its sections).

    Returns:
        (setting -> value, setting -> flag).
    """
    dests = {option: action.dest for action in build_parser()._actions
             for option in action.option_strings}
    given = set(cfg.run.given_flags) | ({dests["--aug_rate"]} if "augment" in
                                        cfg.run.given_flags else set())
    config = json.loads(cfg.to_json())
    overrides, labels = {}, {}
    for name, (flags, path) in SETTINGS.items():
        if flags and any(dests[f] in given for f in flags):
            value = lookup(config, path)
            overrides[name] = tuple(value) if name == "rsd" else value
            labels[name] = flags[0]
    return overrides, labels


def load_init(cfg: Config) -> tuple[Init, Settings]:
    """--checkpoint's init and its settings with the typed flags (no model is built yet).

    Prints the init, what it was trained on, and every flag that overrides its settings.

    Args:
        cfg: the run config.

    Returns:
        (init, settings).
    """
    overrides, labels = flag_overrides(cfg)
    init, settings = resolve_init(cfg.run.checkpoint, overrides, labels)
    print(f"Init {init.path}: {init.trained_on()}", flush=True)
    base, _ = settings_lib.init_settings(init)
    for setting, flag in sorted(labels.items(), key=lambda item: item[1]):
        before = settings_lib.shown(base[setting]) if setting in base else "default"
        print(f"{flag} {settings_lib.shown(settings.value(setting))} overrides the init's "
              f"{before}", flush=True)
    return init, settings


def output_paths(cfg: Config) -> tuple[str, str, str | None]:
    """(images to segment, masks folder, weights folder or None) of --fine-tune-task, or of
    segmenting with adapted weights (--query_dir without --fine-tune-task)."""
    task_dir, run = cfg.run.fine_tune_task, cfg.run
    if task_dir is None:
        return run.query_dir, run.masks_dir, None
    return (run.query_dir or os.path.join(task_dir, "query"),
            run.masks_dir or os.path.join(task_dir, DEFAULT_OUT_NAME),
            run.fine_tuned_checkpoint or os.path.join(task_dir, DEFAULT_WEIGHTS_NAME))


def load_user_folder(cfg: Config) -> UserTask:
    """Read and check --fine-tune-task DIR's examples and its output paths (writes nothing)."""
    task = load_user_task(cfg.run.fine_tune_task)
    _, masks, weights = output_paths(cfg)
    check_outputs(cfg.run.fine_tune_task, masks, weights)
    return task


def check_before_training(cfg: Config) -> None:
    """What --fine-tune-task after meta-training or UHO refuses before that work: the folder,
    and a file of the user's in the way in the masks folder (the weights' key, and so whether
    earlier masks there are this run's, is known only after it)."""
    load_user_folder(cfg)
    images, masks, _ = output_paths(cfg)
    check_masks_folder(images, masks, formats=cfg.run.mask_format, key=None, parts={},
                       flag="--masks_dir")


def _segment(cfg: Config, seg: Segmenter, **details) -> dict:
    """Segment the images into the masks folder (resumable) and print what it did."""
    images, masks, _ = output_paths(cfg)
    summary = seg.predict_folder(images, masks, formats=cfg.run.mask_format,
                                 restart=cfg.run.restart, category=details.get("task"),
                                 truth=cfg.run.query_masks, flag="--masks_dir", **details)
    for line in summary["warnings"] + summary["shared_stems"]:
        print(f"Warning: {line}", flush=True)
    for rel, reason in summary["skipped"]:
        print(f"Skipped {os.path.join(images, rel)}: {reason}", flush=True)
    scored = f"; mean IoU on the images with a ground truth {summary['mean_iou']:.4f}" \
        if summary["mean_iou"] is not None else ""
    print(f"Wrote the masks ({', '.join(cfg.run.mask_format)}) of {summary['segmented']} "
          f"image(s) to {masks} ({summary['done_before']} done before, "
          f"{len(summary['skipped'])} skipped; {summary['images_per_s']:.2f} images/s){scored}",
          flush=True)
    return summary


def _run_folder(cfg: Config, seg: Segmenter, task: UserTask) -> dict:
    """Adapt to the task's examples (or reuse the weights they gave before), then segment."""
    images, masks, weights = output_paths(cfg)  # checked by load_user_folder, just before
    key, parts = seg.key(task.support_images, task.support_masks)
    check_masks_folder(images, masks, formats=cfg.run.mask_format, key=key,
                       parts={**parts, "category": task.name}, restart=cfg.run.restart,
                       flag="--masks_dir")  # refused before the fit, not after
    if seg.load_adapted(weights, key):
        print(f"Reusing the adapted weights in {weights} (the same init, examples and "
              f"settings)", flush=True)
        final_loss = None
    else:
        a = seg.settings.adapt
        print(f"Fine-tuning on {len(task.support_images)} examples of {task.name!r} "
              f"({task.source}; lr={a.learning_rate:.4g}, steps={a.steps}, "
              f"batch={a.batch_size or 'all'}, aug_rate={a.aug_rate:.3g}, "
              f"drop_rate={a.dropout_rate:.3g})", flush=True)
        losses = seg.fit(task.support_images, task.support_masks)
        final_loss = float(losses[-1]) if len(losses) else None
        seg.save(weights, task=task.name, task_dir=task.folder,
                 support=[os.path.basename(p) for p in task.support_paths])
    return _segment(cfg, seg, task=task.name, num_support=len(task.support_images),
                    final_loss=final_loss, weights=os.path.abspath(weights))


def fine_tune_only(cfg: Config) -> int:
    """--fine-tune-task DIR --checkpoint INIT: the init's own settings, the typed flags win."""
    init, settings = load_init(cfg)  # refusals first: nothing is built or written yet
    task = load_user_folder(cfg)
    lock.hold(cfg.run.fine_tune_task, "--fine-tune-task")  # one process writes its outputs
    _run_folder(cfg, build(init, settings), task)
    return 0


def segment_only(cfg: Config) -> int:
    """--checkpoint WEIGHTS --query_dir TREE --masks_dir OUT: adapted weights (fine-tuned:
    --fine-tune-task's, the page's weights.zip) segment a folder as they are."""
    init, settings = load_init(cfg)
    if init.kind != "fine_tuned":
        raise UserError(f"--query_dir without --fine-tune-task segments with adapted weights as "
                        f"they are, and --checkpoint {cfg.run.checkpoint!r} holds a "
                        f"{KIND_NAMES[init.kind]}: pass --fine-tune-task DIR with its examples "
                        f"to adapt it first, or adapted weights.")
    images, masks, _ = output_paths(cfg)
    check_outputs(None, masks, None)
    lock.hold(masks, "--masks_dir")
    _segment(cfg, build(init, settings), task=init.state.get("task"))
    return 0


def fine_tune_after_uho(cfg: Config, loop: InnerLoop, uho: UHOResult | None) -> dict:
    """--fine-tune-task after meta-training or UHO: the run's own model and the flags' (or
    UHO's) schedule.

    Args:
        cfg: the run config.
        loop: the inner loop holding the init.
        uho: UHO's result, or None for the flags' schedule.

    Returns:
        the summary (also in DIR/predictions/summary.json).
    """
    task = load_user_folder(cfg)
    lock.hold(cfg.run.fine_tune_task, "--fine-tune-task")
    adaptation = final_adaptation(cfg, uho)
    sources = {name: "UHO" if uho is not None and name in UHO_SETTINGS else "the command line"
               for name in SETTINGS}
    settings = Settings(model=cfg.model, loss=cfg.loss, adapt=adaptation, sources=sources)
    init = find_init(cfg.run.checkpoint) if os.path.exists(cfg.run.checkpoint) else None
    return _run_folder(cfg, Segmenter(loop, settings, init), task)
