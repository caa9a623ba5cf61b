"""run_metasegnet.py's steps around test-time adaptation, each one call from a mode:

* `uho_step`: UHO on the val classes (`optimize_update_hyperparams_step`, adapt/uho*.py), then
  `meta_fine_tune_on_train_val` (`--meta_fine_tune_steps_on_train_val S`);
* `final_adaptation`: the final evaluation's adaptation (UHO's choice, every searched
  dimension, or the flags');
* `evaluation_hooks`: prediction PNGs and per-task fine-tuned checkpoints;
* `k_shot_step`: `--run_k_shot_learning_curves_experiment`;
* `joint_train_step`: `--joint_train`.

Like run_metasegnet.py it sits above the library: it reads the parsed `Config` and hands the
library plain configs and kwargs.
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial

import numpy as np

from adapt.evaluate import monitor
from adapt.fine_tuned import DEFAULT_DIR_NAME, combine_hooks, make_checkpoint_saver
from adapt.kshot import run_k_shot_experiment
from adapt.uho import UHOResult, UpdateHyperparams
from adapt.uho_objective import apply_update_hyperparams, run_uho
from args import Config
from baselines.joint_train import joint_train
from data.splits import Splits
from devices.precision import LOSS_SCALE_FLOAT16, use_jit
from meta.algorithms import MetaLearner
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.streams import STREAM_META_FINE_TUNE, recorded_task_streams
from meta.train import meta_train
from models.losses import make_loss
from storage import checkpoint

META_FINE_TUNE_DIR = "fine-tuned_on_train_val_with_optimized_update_hyperparams"


def make_inner_loop(cfg: Config, model) -> InnerLoop:
    """The run's inner loop around a built model: its loss and adaptation (meta-training's inner
    loop shares the adaptation's optimizer), XLA, float16 loss scaling. It holds the
    augmentation's graph when any adaptation of the run augments: --augment, or UHO searching
    --aug_rate."""
    augment = cfg.adapt.aug_rate > 0 or cfg.meta.inner.aug_rate > 0 or \
        cfg.run.optimize_update_hyperparms_on_val_set
    return InnerLoop(model, make_loss(cfg.loss, model), cfg.adapt, augment=augment,
                     jit_compile=use_jit(cfg.device.jit_compile),
                     loss_scale=LOSS_SCALE_FLOAT16 if cfg.device.mixed_precision == "float16"
                     else None)


def uho_step(run, loop: InnerLoop, replicas=None) -> UHOResult | None:
    """UHO on the val classes, then the meta-fine-tuning with its adaptation, when the flags ask.

    Args:
        run: the prepared run (modes.prepare.Run).
        loop: the inner loop holding the init (meta-fine-tuning updates it).
        replicas: spread UHO's val episodes over these replicas (--distribute mirrored).

    Returns:
        UHO's result, or None without --optimize_update_hyperparms_on_val_set.
    """
    cfg = run.cfg
    if not cfg.run.optimize_update_hyperparms_on_val_set:
        return None
    uho = optimize_update_hyperparams_step(cfg, loop, run.tasks, run.splits, run.out_dir,
                                           replicas=replicas)
    if cfg.uho.meta_fine_tune_steps_on_train_val > 0:
        meta_fine_tune_on_train_val(cfg, loop, run.tasks, run.splits, run.out_dir, uho.best)
    return uho


def optimize_update_hyperparams_step(cfg: Config, loop: InnerLoop, tasks, splits: Splits,
                                     out_dir: str, replicas=None) -> UHOResult:
    """Run (or resume) UHO on the val classes; print and return its choice.

    Args:
        cfg: the run config.
        loop: the inner loop holding the trained init.
        tasks: class name -> ClassData.
        splits: the class splits (val must be non-empty).
        out_dir: the checkpoint directory (CSV, plot, uho_best.json).

    Returns:
        UHOResult.
    """
    if not splits.val:
        raise ValueError("--optimize_update_hyperparms_on_val_set needs val classes: pass "
                         "--num_val_tasks N (N >= 1).")
    print(f"UHO on {len(splits.val)} val classes: {cfg.uho.num_configs_to_sample} configurations"
          f" x {cfg.uho.uho_outer_iters} round(s), early stopping within "
          f"[{cfg.uho.min_steps}, {cfg.uho.max_steps}] steps, patience {cfg.uho.patience}",
          flush=True)
    result = run_uho(loop, tasks, splits.val, cfg.adapt, cfg.uho, cfg.eval, seed=cfg.meta.seed,
                     out_dir=out_dir, replicas=replicas)
    best = result.best
    print(f"UHO chose lr={best.lr:.4g}, steps={best.steps}, drop_rate={best.drop_rate:.3g}, "
          f"aug_rate={best.aug_rate:.3g}, inner_batch_size={best.inner_batch_size} "
          f"(mean val IoU {result.best_mean_iou:.4f} over {result.num_configs} configurations)",
          flush=True)
    return result


def final_adaptation(cfg: Config, uho: UHOResult | None) -> Adaptation:
    """The final evaluation's adaptation: UHO's choice, or the flags'.

    Args:
        cfg: the run config.
        uho: UHO's result, or None for the flags' adaptation.

    Returns:
        Adaptation.
    """
    return cfg.adapt if uho is None else apply_update_hyperparams(cfg.adapt, uho.best)


def meta_fine_tune_on_train_val(cfg: Config, loop: InnerLoop, tasks, splits: Splits,
                                out_dir: str, best: UpdateHyperparams) -> None:
    """Meta-train S more iterations on train + val classes with UHO's schedule (ml4ai/mliis
    meta_learners/supervised_reptile/supervised_reptile/eval.py).

    The inner loop uses UHO's lr, steps, batch size and aug rate; the meta step is fixed at
    --meta-step-final. Unlike the reference, S counts the iterations (it ran --meta-iters).
    Checkpoints go to <checkpoint>/fine-tuned_on_train_val_with_optimized_update_hyperparams/,
    and a rerun resumes there.

    Args:
        cfg: the run config.
        loop: the inner loop (its model is updated in place).
        tasks: class name -> ClassData.
        splits: the class splits.
        out_dir: the checkpoint directory.
        best: UHO's choice.
    """
    iterations = cfg.uho.meta_fine_tune_steps_on_train_val
    min_iters = 2 if cfg.meta.foml_tail is not None else 1
    inner = dataclasses.replace(cfg.meta.inner, learning_rate=best.lr,
                                steps=max(best.steps, min_iters),
                                batch_size=best.inner_batch_size, aug_rate=best.aug_rate)
    run_dir = os.path.join(out_dir, META_FINE_TUNE_DIR)
    resumed = checkpoint.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    meta = dataclasses.replace(cfg.meta, meta_iters=iterations,
                               meta_step_size=cfg.meta.meta_step_size_final,
                               eval_interval=min(cfg.meta.eval_interval, iterations),
                               task_streams=recorded_task_streams(checkpoint.read_config(resumed))
                               if resumed else cfg.meta.task_streams, inner=inner)
    learner = MetaLearner(loop, meta)
    groups = learner.checkpoint_groups()
    rng = np.random.default_rng([cfg.meta.seed, STREAM_META_FINE_TUNE])
    state = checkpoint.resume(run_dir, groups, rng)
    start = 0 if state is None else int(state["step"])
    print(f"Meta-fine-tuning on {len(splits.train) + len(splits.val)} train + val classes for "
          f"{iterations} meta-iterations (from {start}) with lr={best.lr:.4g}, "
          f"inner_iters={inner.steps}, meta-step {meta.meta_step_size:g}", flush=True)
    merged = Splits(train=tuple(sorted(splits.train + splits.val)), val=splits.val,
                    test=splits.test)
    watch = partial(monitor, learner, tasks, merged, meta=meta, evaluation=cfg.eval,
                    adaptation=apply_update_hyperparams(cfg.adapt, best))
    meta_train(learner, tasks, merged, meta=meta, monitor=watch, rng=rng, run_dir=run_dir,
               config_json=cfg.to_json(), checkpoint_groups=groups, start_step=start)


def uho_comparison(cfg: Config, uho: UHOResult, result, fixed) -> dict:
    """Print and summarize UHO's schedule against the flags' fixed one on the same episodes.

    Args:
        cfg: the run config.
        uho: UHO's result.
        result: the final evaluation with UHO's schedule.
        fixed: the same evaluation with the flags' schedule.

    Returns:
        JSON-ready dict for meta-test_results.json.
    """
    best = uho.best
    print(f"Same {result.split} episodes: UHO schedule (lr={best.lr:.4g}, steps={best.steps}, "
          f"batch={best.inner_batch_size}, aug_rate={best.aug_rate:.3g}, "
          f"drop_rate={best.drop_rate:.3g}) mIoU {result.mean_iou:.4f} +/- {result.ci95:.4f} vs "
          f"fixed schedule (lr={cfg.adapt.learning_rate:.4g}, steps={cfg.adapt.steps}) mIoU "
          f"{fixed.mean_iou:.4f} +/- {fixed.ci95:.4f}", flush=True)
    return {**dataclasses.asdict(best), "mean_val_iou": uho.best_mean_iou,
            "num_configs": uho.num_configs, "uho_schedule_mean_iou": result.mean_iou,
            "fixed_schedule": fixed.summary()}


def evaluation_hooks(cfg: Config, model, split: str, out_dir: str, predictions_hook=None):
    """The after_adapt hooks of one final evaluation: prediction PNGs, fine-tuned checkpoints.

    Args:
        cfg: the run config.
        model: the adapted model.
        split: "train" | "val" | "test".
        out_dir: the checkpoint directory (default root of the fine-tuned checkpoints).
        predictions_hook: SAVE_PREDICTIONS hook, or None.

    Returns:
        a hook or None.
    """
    save = (cfg.eval.save_fine_tuned_checkpoints_train if split == "train"
            else cfg.eval.save_fine_tuned_checkpoints)
    saver = None
    if save:
        root = cfg.eval.save_fine_tuned_checkpoints_dir or os.path.join(out_dir, DEFAULT_DIR_NAME)
        saver = make_checkpoint_saver(model, root, split, cfg.to_json())
        print(f"Fine-tuned checkpoints of the {split} tasks go to {os.path.join(root, split)}",
              flush=True)
    return combine_hooks(predictions_hook, saver)


def k_shot_step(cfg: Config, loop: InnerLoop, tasks, names, out_dir: str,
                uho: UHOResult | None) -> dict:
    """--run_k_shot_learning_curves_experiment on the given classes (and the baseline, if any).

    Args:
        cfg: the run config.
        loop: the inner loop holding the (meta-learned) init.
        tasks: class name -> ClassData.
        names: the classes (the final-evaluation split).
        out_dir: where k-shot-results.csv/.png go.
        uho: UHO's result (its schedule is used), or None.

    Returns:
        label -> {k: [IoU]}.
    """
    from models.build import build_model

    loops = {"meta-learned": loop}
    if cfg.kshot.baseline_checkpoint:
        model = build_model(cfg.model)  # every weight comes from the baseline's checkpoint
        baseline = make_inner_loop(cfg, model)
        checkpoint.load_checkpoint(cfg.kshot.baseline_checkpoint, {"model": list(model.variables)})
        loops["joint-training baseline"] = baseline
    curves = run_k_shot_experiment(loops, tasks, names, final_adaptation(cfg, uho), cfg.kshot,
                                   repetitions=cfg.eval.eval_samples, seed=cfg.meta.seed,
                                   out_dir=out_dir, transductive=cfg.eval.transductive)
    for label, per_k in curves.items():
        print(f"k-shot {label}: " + ", ".join(f"k={k}: {np.mean(v):.4f}"
                                               for k, v in sorted(per_k.items())), flush=True)
    print(f"k-shot results written to {out_dir}/k-shot-results.csv and .png", flush=True)
    return curves


def joint_train_step(cfg: Config, loop: InnerLoop, tasks, splits: Splits, out_dir: str) -> None:
    """--joint_train: supervised training on the pooled meta-train classes (resumable).

    Args:
        cfg: the run config (--joint_train_epochs; meta-training's inner adaptation: --inner-batch,
            --learning-rate, --augment, --final_layer_dropout_rate, --seed).
        loop: the inner loop of the model to train.
        tasks: class name -> ClassData.
        splits: the class splits (train is pooled).
        out_dir: the checkpoint directory.
    """
    joint_train(loop, tasks, splits.train, training=cfg.meta.inner,
                epochs=cfg.run.joint_train_epochs, run_dir=out_dir, config_json=cfg.to_json(),
                keep=cfg.meta.keep_checkpoints)
