"""Which checkpoint a run starts from, and whether its config allows it."""
from __future__ import annotations

import json
import os

import numpy as np

from args import Config
from meta.algorithms import MetaLearner
from modes.setup import RunError
from storage import checkpoint, tf1_checkpoint

# Fields whose change makes a checkpoint's weights meaningless for this model.
MODEL_STRUCTURE = ("model_name", "image_size", "feature_extractor_name", "rsd",
                   "spatial_pyramid_pooling", "skip_decoding", "disable_rsd_residual_connections",
                   "n_unet_encoding_stacks", "start_num_feature_maps_power")
# Settings a resumed meta-training run may change without breaking the trajectory's meaning.
RESUME_MAY_CHANGE = ("meta.meta_iters", "meta.eval_interval", "meta.monitor_tasks",
                     "meta.keep_checkpoints", "model.restore_efficient_net_weights_from")


def check_compatible(path: str, cfg: Config, *, resume: bool) -> None:
    saved = checkpoint.read_config(path)
    current = json.loads(cfg.to_json())
    problems = checkpoint.config_differences(
        {"model": {k: saved.get("model", {}).get(k) for k in MODEL_STRUCTURE}},
        {"model": {k: current["model"].get(k) for k in MODEL_STRUCTURE}}, ["model"])
    if resume:
        # Runs from before --augmentation used metaseg's; without --augment the choice is moot.
        saved.get("inner", {}).setdefault("augmentation", "metaseg")
        moot = () if cfg.inner.augment else ("inner.augmentation",)
        problems += checkpoint.config_differences(saved, current, ["loss", "inner", "meta"],
                                                  ignore=RESUME_MAY_CHANGE + moot)
        problems += checkpoint.config_differences(
            {"data": {k: saved.get("data", {}).get(k) for k in ("test_tasks_file", "num_test_tasks",
                                                              "num_val_tasks", "seed")}},
            {"data": {k: current["data"].get(k) for k in ("test_tasks_file", "num_test_tasks",
                                                        "num_val_tasks", "seed")}}, ["data"])
    if problems:
        what = "resume meta-training from" if resume else "load"
        raise RunError(f"Cannot {what} checkpoint {path}: its config differs from this run's:\n  "
                       + "\n  ".join(problems)
                       + "\nRerun with the checkpoint's flags (its config.json) or use a fresh "
                         "--checkpoint directory.")


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
    # The head dropout rate is a model variable, but the flags decide it
    # (--final_layer_dropout_rate).
    skip = ("final_dropout/rate",) + (
        ("final_layer_weights",) if cfg.run.do_not_restore_final_layer_weights else ())
    if cfg.run.pretrained:
        if tf1_checkpoint.is_tf1_checkpoint(run_dir):
            report = tf1_checkpoint.restore_tf1_checkpoint(
                model, run_dir, cfg.model,
                restore_final_layer=not cfg.run.do_not_restore_final_layer_weights)
            print(f"Restored TF1 checkpoint {report.checkpoint}: {report.mapped}", flush=True)
            return 0
        path = checkpoint.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
        if path is None:
            raise RunError(f"--pretrained evaluates the checkpoint in --checkpoint {run_dir!r}, "
                           f"but it holds none (no {checkpoint.LAST} pointer, no TF1 checkpoint).")
        check_compatible(path, cfg, resume=False)
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
