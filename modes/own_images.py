"""run_metasegnet.py's modes around one init: `--fine-tune-task DIR --checkpoint INIT`, `--serve`
and `--export` (without --data-dir).

They load the init through `segmenter` with the settings the init carries; a flag typed on the
command line overrides the init's value (and is printed as such), and one that contradicts the
init's architecture is refused before any model is built.
"""
from __future__ import annotations

import dataclasses
import json
import os

from adapt.own_images import DEFAULT_OUT_NAME, DEFAULT_WEIGHTS_NAME, check_outputs
from adapt.uho import UHOResult
from args import Config
from errors import UserError
from data.user_task import UserTask, load_user_task
from meta.inner import InnerLoop
from modes.experiments import final_schedule
from segmenter import settings as settings_lib
from segmenter.api import Segmenter, build, resolve_init
from segmenter.folder import segment_folder
from segmenter.inits import Init, find_init
from segmenter.settings import Settings
from storage import lock

# flag dest -> (setting, the flag as typed, its value in the Config)
FLAG_SETTINGS = {
    "model_name": ("model_name", "--model_name", lambda c: c.model.model_name),
    "image_size": ("image_size", "--image_size", lambda c: c.model.image_size),
    "feature_extractor_name": ("feature_extractor_name", "--feature_extractor_name",
                               lambda c: c.model.feature_extractor_name),
    "rsd": ("rsd", "--rsd", lambda c: c.model.rsd),
    "spatial_pyramid_pooling": ("spatial_pyramid_pooling", "--spatial_pyramid_pooling",
                                lambda c: c.model.spatial_pyramid_pooling),
    "skip_decoding": ("skip_decoding", "--skip_decoding", lambda c: c.model.skip_decoding),
    "disable_rsd_residual_connections": ("disable_rsd_residual_connections",
                                         "--disable_rsd_residual_connections",
                                         lambda c: c.model.disable_rsd_residual_connections),
    "n_unet_encoding_stacks": ("n_unet_encoding_stacks", "--n_unet_encoding_stacks",
                               lambda c: c.model.n_unet_encoding_stacks),
    "start_num_feature_maps_power": ("start_num_feature_maps_power",
                                     "--start_num_feature_maps_power",
                                     lambda c: c.model.start_num_feature_maps_power),
    "no_align_corners": ("align_corners", "--no_align_corners", lambda c: c.model.align_corners),
    "final_layer_dropout_rate": ("dropout_rate", "--final_layer_dropout_rate",
                                 lambda c: c.model.final_layer_dropout_rate),
    "loss_name": ("loss_name", "--loss_name", lambda c: c.loss.loss_name),
    "label_smoothing": ("label_smoothing", "--label_smoothing", lambda c: c.loss.label_smoothing),
    "l2": ("l2", "--l2", lambda c: c.loss.l2),
    "l1": ("l1", "--l1", lambda c: c.loss.l1),
    "darc1": ("darc1", "--darc1", lambda c: c.loss.darc1),
    "sgd": ("sgd", "--sgd", lambda c: c.inner.sgd),
    "learning_rate": ("learning_rate", "--learning-rate", lambda c: c.inner.learning_rate),
    "learning_rate_scheduler": ("scheduler", "--learning_rate_scheduler",
                                lambda c: c.inner.learning_rate_scheduler),
    "step_decay_rate": ("step_decay_rate", "--step_decay_rate",
                        lambda c: c.inner.step_decay_rate),
    "decay_after_n_steps": ("decay_after_n_steps", "--decay_after_n_steps",
                            lambda c: c.inner.decay_after_n_steps),
    "replacement": ("replacement", "--replacement", lambda c: c.inner.replacement),
    "weight_decay": ("weight_decay", "--weight-decay", lambda c: c.inner.weight_decay),
    "augment": ("aug_rate", "--augment", lambda c: c.inner.aug_rate),
    "aug_rate": ("aug_rate", "--aug_rate", lambda c: c.inner.aug_rate),
    "augmentation": ("augmentation", "--augmentation", lambda c: c.inner.augmentation),
    "eval_iters": ("steps", "--eval-iters", lambda c: c.eval.eval_iters),
    "eval_batch": ("batch_size", "--eval-batch", lambda c: c.eval.eval_batch_size),
    "seed": ("seed", "--seed", lambda c: c.meta.seed),
    "base_lr": ("learning_rate", "--base_lr", lambda c: c.mtl.base_lr),
    "update_step": ("steps", "--update_step", lambda c: c.mtl.update_step),
}


def flag_overrides(cfg: Config) -> tuple[dict, dict]:
    """The settings the typed flags override, and each setting's flag (for messages).

    Args:
        cfg: the run config (its `run.given_flags`).

    Returns:
        (setting -> value, setting -> flag).
    """
    overrides, labels = {}, {}
    for dest in cfg.run.given_flags:
        if dest in FLAG_SETTINGS:
            setting, flag, value = FLAG_SETTINGS[dest]
            overrides[setting], labels[setting] = value(cfg), flag
    return overrides, labels


def load_init(cfg: Config) -> tuple[Init, Settings]:
    """--checkpoint's init and its settings with the typed flags (no model is built yet).

    Prints the init, what it was trained on, and every flag that overrides its settings.

    Args:
        cfg: the run config.

    Returns:
        (init, settings).
    """
    if "checkpoint" not in cfg.run.given_flags:
        raise UserError("--fine-tune-task, --serve and --export need --checkpoint INIT: a "
                        "meta-training run, fine-tuned weights, an MTL phase folder or the "
                        "paper's TF1 checkpoint.")
    overrides, labels = flag_overrides(cfg)
    init, settings = resolve_init(cfg.run.checkpoint, overrides, labels)
    print(f"Init {init.path}: {init.trained_on()}", flush=True)
    base, _ = settings_lib.init_settings(init)
    for setting, flag in sorted(labels.items(), key=lambda item: item[1]):
        before = settings_lib.shown(base[setting]) if setting in base else "default"
        print(f"{flag} {settings_lib.shown(settings.value(setting))} overrides the init's "
              f"{before}", flush=True)
    return init, settings


def output_paths(cfg: Config) -> tuple[str, str]:
    """(predictions folder, weights folder) of --fine-tune-task."""
    task_dir = cfg.run.fine_tune_task
    return (os.path.join(task_dir, DEFAULT_OUT_NAME),
            cfg.run.fine_tuned_checkpoint or os.path.join(task_dir, DEFAULT_WEIGHTS_NAME))


def load_user_folder(cfg: Config) -> UserTask:
    """Read and validate --fine-tune-task DIR and its output paths (raises; writes nothing)."""
    task = load_user_task(cfg.run.fine_tune_task)
    check_outputs(cfg.run.fine_tune_task, *output_paths(cfg))
    return task


def _run_folder(cfg: Config, seg: Segmenter, task: UserTask) -> dict:
    out, weights = output_paths(cfg)  # checked by load_user_folder, just before
    a = seg.settings.adapt
    print(f"Fine-tuning on {len(task.support_images)} support pairs of "
          f"{cfg.run.fine_tune_task!r} (lr={a.learning_rate:.4g}, steps={a.steps}, "
          f"batch={a.batch_size or 'all'}, aug_rate={a.aug_rate:.3g}, "
          f"drop_rate={a.dropout_rate:.3g})", flush=True)
    summary = segment_folder(seg, task, out_dir=out, weights_dir=weights)
    for line in summary["warnings"]:
        print(f"Warning: {line}", flush=True)
    scored = f", mean IoU on the queries with masks {summary['mean_iou']:.4f}" \
        if summary["mean_iou"] is not None else ""
    print(f"Wrote {len(task.query_paths)} query masks and overlays to {out} and the adapted "
          f"weights to {weights}{scored}", flush=True)
    return summary


def fine_tune_only(cfg: Config) -> int:
    """--fine-tune-task DIR --checkpoint INIT: the init's own settings, the typed flags win."""
    init, settings = load_init(cfg)  # refusals first: nothing is built or written yet
    task = load_user_folder(cfg)
    lock.hold(cfg.run.fine_tune_task, "--fine-tune-task")  # one process writes its outputs
    _run_folder(cfg, build(init, settings), task)
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
    schedule, drop_rate = final_schedule(cfg, uho)
    overrides = {"learning_rate": schedule.learning_rate, "steps": schedule.iters,
                 "batch_size": schedule.batch_size, "aug_rate": schedule.aug_rate,
                 "dropout_rate": drop_rate} if uho is not None else {}
    settings = settings_lib.from_config(json.loads(cfg.to_json()), "the command line", overrides,
                                        "UHO")
    settings = dataclasses.replace(settings, model=dataclasses.replace(
        settings.model, final_layer_dropout_rate=cfg.model.final_layer_dropout_rate))
    init = find_init(cfg.run.checkpoint) if os.path.exists(cfg.run.checkpoint) else None
    return _run_folder(cfg, Segmenter(loop, settings, init), task)
