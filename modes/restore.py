"""Which checkpoint a run starts from, and whether its config allows it."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from args import Config
from meta.algorithms import MetaLearner
from meta.settings import ARCHITECTURE, read_config
from meta.streams import ONE_STREAM, recorded_task_streams
from modes.setup import RunError
from storage import checkpoint, tf1_checkpoint

# Settings a resumed meta-training run may change without breaking the trajectory's meaning (the
# head dropout of the inner loop included, as when it was a model setting).
RESUME_MAY_CHANGE = ("meta.meta_iters", "meta.eval_interval", "meta.monitor_tasks",
                     "meta.keep_checkpoints", "model.restore_efficient_net_weights_from",
                     "meta.inner.dropout_rate")


def check_compatible(path: str, cfg: Config, *, resume: bool) -> None:
    """Refuse a checkpoint whose architecture differs from this run's, or, to resume it, whose
    meta-training settings differ (config.json of any version, `meta.settings.read_config`).

    Args:
        path: the checkpoint.
        cfg: this run's config.
        resume: compare what meta-training's trajectory depends on too.

    Raises:
        RunError: listing every difference and the fix.
    """
    saved = read_config(checkpoint.read_config(path))
    current = json.loads(cfg.to_json())
    problems = checkpoint.config_differences(saved, current,
                                             [f"model.{name}" for name in ARCHITECTURE])
    if resume:
        saved.setdefault("meta", {}).setdefault("task_streams", recorded_task_streams(saved))
        # Without augmentation the transforms' choice is moot.
        moot = () if cfg.meta.inner.aug_rate > 0 else ("meta.inner.augmentation",)
        problems += checkpoint.config_differences(
            saved, current, ["loss", "meta", "data.test_tasks_file",
                             "data.num_test_tasks", "data.num_val_tasks", "data.seed"],
            ignore=RESUME_MAY_CHANGE + moot, files=("data.test_tasks_file",))
    if problems:
        what = "resume meta-training from" if resume else "load"
        raise RunError(f"Cannot {what} checkpoint {path}: its config differs from this run's:\n  "
                       + "\n  ".join(problems)
                       + "\nRerun with the checkpoint's flags (its config.json) or use a fresh "
                         "--checkpoint directory.")


def with_resumed_task_streams(cfg: Config) -> Config:
    """cfg with the task-stream scheme of the checkpoint meta-training resumes, when that
    checkpoint was written before the scheme was recorded (`meta.streams`).

    Args:
        cfg: the run config.

    Returns:
        cfg, or cfg with the checkpoint's `meta.task_streams`.
    """
    if cfg.run.pretrained or cfg.run.mtl or cfg.run.joint_train:
        return cfg
    source = resume_source(cfg)
    if source is None:
        return cfg
    saved = checkpoint.read_config(source)
    if "task_streams" in saved.get("meta", {}):
        return cfg  # recorded: a different --task_streams is refused like any meta setting
    streams = recorded_task_streams(saved)
    if streams == ONE_STREAM and cfg.device.distribute != "none":
        raise RunError(f"Checkpoint {source} was written by an earlier version without "
                       f"--distribute: its tasks draw from one random stream, which only one "
                       f"device continues exactly. Resume it without --distribute, or start a "
                       f"fresh --checkpoint.")
    if streams != cfg.meta.task_streams:
        print(f"{source} was written by an earlier version: resuming with its task streams "
              f"(--task_streams {streams})", flush=True)
    return dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, task_streams=streams))


def resume_source(cfg: Config) -> str | None:
    """The metaseg checkpoint meta-training resumes from (None for a fresh run).

    A TF1 checkpoint given as --continue_training_from_checkpoint is not resumed from: `restore`
    loads its weights into a fresh run, and once that run has written checkpoints of its own, a
    rerun resumes those.

    Args:
        cfg: the run config.

    Returns:
        a checkpoint folder, or None.
    """
    source, run_dir = cfg.run.continue_training_from_checkpoint, cfg.run.checkpoint
    own = run_dir if os.path.isdir(run_dir) and checkpoint.latest_checkpoint(run_dir) else None
    if source is None or tf1_checkpoint.is_tf1_checkpoint(source):
        source = own  # rerunning the same command resumes where it stopped
    if source is None:
        return None
    path = checkpoint.latest_checkpoint(source) if os.path.isdir(source) and not \
        os.path.isfile(os.path.join(source, "state.json")) else source
    if path is None or not os.path.isfile(os.path.join(path, "state.json")):
        raise RunError(f"--continue_training_from_checkpoint {source!r} holds no metaseg "
                       f"checkpoint (no {checkpoint.LAST} pointer or state.json) and no TF1 "
                       f"checkpoint.")
    return path


def pretrained_source(cfg: Config) -> str | None:
    """The checkpoint --pretrained evaluates, checked against the flags (before any output).

    Args:
        cfg: the run config (--checkpoint, the model flags).

    Returns:
        a metaseg checkpoint folder, or None for a TF1 checkpoint (its variables are mapped by
        name when restored).
    """
    run_dir = cfg.run.checkpoint
    if not os.path.exists(run_dir):
        raise RunError(f"--pretrained evaluates the checkpoint in --checkpoint {run_dir!r}, "
                       f"which does not exist.")
    if tf1_checkpoint.is_tf1_checkpoint(run_dir):
        return None
    path = checkpoint.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if path is None:
        raise RunError(f"--pretrained evaluates the checkpoint in --checkpoint {run_dir!r}, but "
                       f"it holds none (no {checkpoint.LAST} pointer, no TF1 checkpoint): pass "
                       f"a meta-training run folder, the paper's checkpoint folder or its "
                       f".tar.gz.")
    check_compatible(path, cfg, resume=False)
    return path


def restore(cfg: Config, model, learner: MetaLearner, rng: np.random.Generator) -> int:
    """Load what the flags ask for; return the completed meta-iterations to start from.

    Args:
        cfg: the run config.
        model: the built model.
        learner: the meta-learner (inner and outer optimizers).
        rng: the training generator (its state is restored when resuming).

    Returns:
        completed meta-iterations (0 for a fresh run).
    """
    run_dir = cfg.run.checkpoint
    # The head dropout rate is a model variable, but every adaptation sets it.
    skip = ("final_dropout/rate",) + (
        ("final_layer_weights",) if cfg.run.do_not_restore_final_layer_weights else ())
    if cfg.run.pretrained:
        path = pretrained_source(cfg)
        if path is None:
            report = tf1_checkpoint.restore_tf1_checkpoint(
                model, run_dir, cfg.model,
                restore_final_layer=not cfg.run.do_not_restore_final_layer_weights)
            print(f"Restored TF1 checkpoint {report.checkpoint}: {report.mapped}", flush=True)
            return 0
        state = checkpoint.load_checkpoint(path, {"model": list(model.variables)}, skip=skip)
        print(f"Restored {path} (meta-iteration {state['step']}) for evaluation", flush=True)
        return int(state["step"])
    path = resume_source(cfg)
    source = cfg.run.continue_training_from_checkpoint
    if path is None and source is not None:  # a TF1 checkpoint (resume_source takes the rest)
        report = tf1_checkpoint.restore_tf1_checkpoint(
            model, source, cfg.model,
            restore_final_layer=not cfg.run.do_not_restore_final_layer_weights)
        print(f"Continuing meta-training from TF1 checkpoint {report.checkpoint}: its weights "
              f"and batch-norm statistics {report.mapped}; optimizer state and meta-iteration "
              f"count start fresh", flush=True)
        return 0
    if path is None:
        return 0
    check_compatible(path, cfg, resume=True)
    state = checkpoint.load_checkpoint(path, learner.checkpoint_groups(), skip=skip)
    rng.bit_generator.state = state["rng_state"]
    print(f"Resuming meta-training from {path} at meta-iteration {state['step']}", flush=True)
    return int(state["step"])
