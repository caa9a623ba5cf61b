"""run_metasegnet.py's meta-transfer-learning modes: `--model_name mtl_unet --phase ...`.

Three phases, each writing into `<--checkpoint>/<phase>/` (config.json first, like every run):
* `pre_train`: the plain U-Net trained on the pooled meta-train classes (baselines/pretrain.py), or,
  with `--dataset COCO|COCOStuff --dataset_dir DIR --num_classes K`, a K-class U-Net on that
  separate dataset (baselines/pretrain_multiclass.py), best val weights in
  `pre_train/best.weights.h5`;
* `meta_train --init_weights <pre_train dir or .weights.h5>`: the MTL U-Net gets every pre-trained
  kernel by explicit name (`models.mtl.load_pretrained_unet`, a mismatch is an error), its base
  kernels are frozen, and scale/shift + BN + head init are meta-learned (baselines/mtl.py) through
  the shared outer loop (`meta.train.meta_train`: task sampling, monitor, checkpoints, logs); a
  K-class pre-training loads everything but its head, and the `way`-channel head starts fresh;
* `meta_eval --eval_weights <meta_train dir or ckpt folder>`: run_metasegnet.py's final
  evaluation, unchanged, with the MTL adaptation (head only, --update_step SGD steps at --base_lr,
  --teshot shots, --test_query queries): same IoU, same results JSON, same prediction PNGs.
  With --init_weights too, the pre-trained U-Net adapted the same way is evaluated on the same
  episodes and stored next to it.

Class-level splits: pre_train and meta_train train on the meta-train classes and select on the
val classes; each writes `classes.json` with every class it (or the phase it started from)
trained or selected on, and meta_train / meta_eval refuse to go on when the classes they hold out
overlap those.
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial

import keras
import numpy as np

from adapt.evaluate import monitor
from args import Config
from baselines.mtl import MTLLearner, meta_learning_rate, mtl_meta_config
from baselines.pretrain import load_pre_trained, pre_train
from data.splits import Splits
from meta.inner import InnerLoop
from meta.train import held_out_split, meta_train
from models.build import build_model
from models.layers import set_dropout_rate
from models.losses import make_loss
from models.mtl import load_pretrained_unet, set_mtl_mode
from modes.mtl_checks import check_resumable, pretrained_weights_path, read_classes, \
    write_classes
from report.logs import CSV_NAME, PLOT_NAME, plot_training_curves, read_log
from report.plots import plot_phase_curves
from storage import checkpoint

def phase_dir(cfg: Config) -> str:
    """Where a phase writes: `<--checkpoint>/<--phase>`."""
    return os.path.join(cfg.run.checkpoint, cfg.mtl.phase)


def _unet_config(cfg: Config, num_classes: int | None = None):
    return dataclasses.replace(cfg.model, model_name="unet",
                               num_classes=num_classes or cfg.model.num_classes)


def _print_split(phase: str, splits: Splits, evaluated: str) -> None:
    print(f"MTL {phase}: {len(splits.train)} meta-train classes (trained on), {len(splits.val)} "
          f"meta-val, {len(splits.test)} meta-test; {evaluated}.", flush=True)


# ------------------------------------------------------------------------------- weights
def load_pretrained(cfg: Config, mtl_model: keras.Model | None = None) -> keras.Model:
    """The pre-trained plain U-Net (--init_weights) with a `way`-channel head, copied into
    `mtl_model` when given (`baselines.pretrain.load_pre_trained`, printing what starts fresh).

    Args:
        cfg: the run config (--init_weights, model flags).
        mtl_model: an MTL U-Net to receive every base kernel (by explicit name mapping).

    Returns:
        the plain U-Net with the pre-trained weights and a `way`-channel head.
    """
    path = pretrained_weights_path(cfg.mtl.init_weights)
    unet, reset, saved = load_pre_trained(path, cfg.model)
    if reset:
        print(f"The pre-trained U-Net {path} has a {saved}-class head, this run needs "
              f"{cfg.model.num_classes} channels (--way {cfg.mtl.way}: background + object): "
              f"loaded everything but the head; reinitialised {', '.join(reset)} "
              f"(layer final_layer_weights)", flush=True)
    if mtl_model is not None:
        load_pretrained_unet(mtl_model, unet)
        print(f"Loaded the pre-trained U-Net {path} into the MTL U-Net", flush=True)
    return unet


def plot_phase(cfg: Config, out_dir: str, val_label: str = "val") -> list[str]:
    """The phase's mean-IoU and loss curves per epoch (storage/plots.py), in its folder."""
    per_epoch = cfg.mtl.num_batch if cfg.mtl.phase == "meta_train" else 1
    return plot_phase_curves(read_log(os.path.join(out_dir, CSV_NAME)), out_dir, cfg.mtl.phase,
                             tasks_per_epoch=per_epoch, val_label=val_label)


# ---------------------------------------------------------------------------------- phases
def pre_train_phase(cfg: Config, tasks, splits: Splits, out_dir: str,
                    rng: np.random.Generator) -> int:
    """--phase pre_train: train the plain U-Net on the pooled meta-train classes.

    Args:
        cfg: the run config.
        tasks: class name -> ClassData.
        splits: class splits (train: trained on; val: selects the best epoch).
        out_dir: <checkpoint>/pre_train.
        rng: the training generator.

    Returns:
        exit status 0.
    """
    _print_split("pre_train", splits, "best epoch selected on meta-val; meta-test untouched")
    write_classes(out_dir, splits.train, splits.val, splits)
    model = build_model(_unet_config(cfg))
    _start_from(cfg, model, out_dir)
    result = pre_train(model, make_loss(cfg.loss, model), tasks, splits, mtl=cfg.mtl,
                       adaptation=cfg.adapt, monitor_tasks=cfg.meta.monitor_tasks,
                       aug_rate=cfg.meta.inner.aug_rate, seed=cfg.meta.seed, rng=rng,
                       run_dir=out_dir, config_json=cfg.to_json())
    plot_training_curves(os.path.join(out_dir, CSV_NAME), os.path.join(out_dir, PLOT_NAME))
    plot_phase(cfg, out_dir)
    print(f"Pre-training done: best val mIoU {result.best_val_miou:.4f} after epoch "
          f"{result.best_epoch}; weights in {result.best_path}", flush=True)
    return 0


def load_multiclass_data(cfg: Config):
    """The --dataset COCO|COCOStuff data of a multi-class pre-training, read and checked.

    Args:
        cfg: the run config (--dataset, --dataset_dir, --num_classes, --image_size).

    Returns:
        data.multiclass.MulticlassData.
    """
    from data.multiclass import load_multiclass

    return load_multiclass(cfg.mtl.dataset, cfg.mtl.dataset_dir, cfg.model.num_classes,
                           cfg.data.image_size, log=lambda line: print(line, flush=True))


def pre_train_multiclass_phase(cfg: Config, out_dir: str, rng: np.random.Generator,
                               data) -> int:
    """--phase pre_train --dataset COCO|COCOStuff: the K-class U-Net on a separate dataset.

    Args:
        cfg: the run config (--dataset, --dataset_dir, --num_classes, pre-training flags).
        out_dir: <checkpoint>/pre_train.
        rng: the training generator.
        data: the dataset (load_multiclass_data).

    Returns:
        exit status 0.
    """
    from baselines.pretrain_multiclass import constant_prediction_miou, pre_train_multiclass
    from models.multiclass_losses import make_multiclass_loss

    k = cfg.model.num_classes
    print(f"MTL pre_train on --dataset {cfg.mtl.dataset} {data.root}: {len(data.train)} train "
          f"and {len(data.val)} val images, {k} classes; best epoch selected on val mIoU; no "
          f"FSS-1000 class is trained or selected on.", flush=True)
    majority, constant = constant_prediction_miou(data)
    print(f"Val mIoU of predicting the most frequent training class ({majority}) everywhere: "
          f"{constant:.4f}", flush=True)
    write_classes(out_dir, (), (), Splits((), (), ()))
    model = build_model(_unet_config(cfg))
    set_dropout_rate(model, cfg.meta.inner.dropout_rate)
    loss_fn = make_multiclass_loss(cfg.loss, model)
    _start_from(cfg, model, out_dir)
    result = pre_train_multiclass(model, loss_fn, data, mtl=cfg.mtl,
                                  aug_rate=cfg.meta.inner.aug_rate, rng=rng, run_dir=out_dir,
                                  config_json=cfg.to_json())
    plot_training_curves(os.path.join(out_dir, CSV_NAME), os.path.join(out_dir, PLOT_NAME))
    plot_phase(cfg, out_dir)
    print(f"Pre-training done: best val mIoU over {k} classes {result.best_val_miou:.4f} after "
          f"epoch {result.best_epoch}; weights in {result.best_path}", flush=True)
    return 0


def _start_from(cfg: Config, model: keras.Model, out_dir: str) -> None:
    """--pre_init_weights: a fresh pre-training starts from these weights (a resume ignores it)."""
    if cfg.mtl.pre_init_weights and checkpoint.latest_checkpoint(out_dir) is None:
        if not os.path.isfile(cfg.mtl.pre_init_weights):
            raise FileNotFoundError(f"--pre_init_weights {cfg.mtl.pre_init_weights!r} does not "
                                    f"exist (a .weights.h5 of the plain U-Net).")
        model.load_weights(cfg.mtl.pre_init_weights)
        print(f"Pre-training starts from {cfg.mtl.pre_init_weights}", flush=True)


def _base_kernels(model: keras.Model) -> list:
    """The frozen pre-trained variables: non-trainable, not BN statistics or RNG states."""
    return [v for v in model.non_trainable_variables
            if not any(k in v.path for k in ("moving_mean", "moving_variance", "seed"))]


def meta_train_phase(cfg: Config, tasks, splits: Splits, out_dir: str,
                     rng: np.random.Generator) -> int:
    """--phase meta_train: meta-learn scale/shift, BN and head init of the frozen U-Net.

    Args:
        cfg: the run config.
        tasks: class name -> ClassData.
        splits: class splits (tasks drawn from train; monitored on val, else test).
        out_dir: <checkpoint>/meta_train (checkpoints, logs, classes.json).
        rng: the training generator (restored when resuming).

    Returns:
        exit status 0.

    Raises:
        RuntimeError: a base kernel changed during meta-training.
    """
    label, _ = held_out_split(splits)
    _print_split("meta_train", splits, f"tasks from meta-train, monitored on meta-{label}")
    model = build_model(cfg.model)
    set_mtl_mode(model, "meta_transfer")
    loop = InnerLoop(model, make_loss(cfg.loss, model), cfg.adapt)
    learner = MTLLearner(loop, cfg.mtl, cfg.adapt)
    groups = learner.checkpoint_groups()
    meta = mtl_meta_config(cfg.mtl, cfg.meta)
    # rerunning the command resumes: model, optimizers, then the RNG (check_phase compared
    # the configs before anything was written)
    state = checkpoint.resume(out_dir, groups, rng, check=partial(check_resumable, cfg))
    start_step = 0 if state is None else int(state["step"])
    if state is not None:
        print(f"Resuming MTL meta-training from {state['path']} at task {start_step}", flush=True)
    else:
        seen = read_classes(pretrained_weights_path(cfg.mtl.init_weights), "--init_weights")
        load_pretrained(cfg, model)
        write_classes(out_dir, set(seen["trained_on"]) | set(splits.train),
                       set(seen["selected_on"]) | set(splits.val), splits)
    frozen = [v.numpy() for v in _base_kernels(model)]
    lr_at = partial(meta_learning_rate, initial=cfg.mtl.meta_lr1, num_batch=cfg.mtl.num_batch,
                    step_size=cfg.mtl.step_size, gamma=cfg.mtl.gamma)
    # The monitor's tasks are meta-training's: --shot supports, --val_query queries.
    monitor_eval = dataclasses.replace(cfg.eval, shots=cfg.mtl.shot, num_query=cfg.mtl.val_query)
    if start_step < meta.meta_iters:
        watch = partial(monitor, learner, tasks, splits, meta=meta, evaluation=monitor_eval,
                        adaptation=cfg.adapt)
        meta_train(learner, tasks, splits, meta=meta, monitor=watch, rng=rng, run_dir=out_dir,
                   config_json=cfg.to_json(), checkpoint_groups=groups, start_step=start_step,
                   meta_step_size_at=lr_at)
    changed = [v.path for v, before in zip(_base_kernels(model), frozen)
               if not np.array_equal(v.numpy(), before)]
    if changed:  # an invariant of the method, checked on the real run too
        raise RuntimeError(f"MTL meta-training changed frozen base kernels: {changed[:5]}")
    plot_training_curves(os.path.join(out_dir, CSV_NAME), os.path.join(out_dir, PLOT_NAME),
                         val_label=label)
    plot_phase(cfg, out_dir, val_label=label)
    print(f"MTL meta-training done ({meta.meta_iters} tasks); {len(frozen)} base kernels "
          f"unchanged; checkpoint {checkpoint.latest_checkpoint(out_dir)}", flush=True)
    return 0


def meta_eval_setup(cfg: Config, splits: Splits, eval_names, eval_split: str
                    ) -> tuple[Config, keras.Model, InnerLoop, int]:
    """--phase meta_eval: the meta-trained MTL U-Net and the config of its evaluation.

    Args:
        cfg: the run config.
        splits: class splits.
        eval_names: the classes run_metasegnet.py evaluates.
        eval_split: their split's name.

    Returns:
        (cfg with the MTL adaptation as evaluation schedule, model, head inner loop,
        meta-training tasks completed).
    """
    _print_split("meta_eval", splits, f"evaluating the {len(eval_names)} meta-{eval_split} "
                                      f"classes, never trained or selected on")
    model = build_model(cfg.model)
    set_mtl_mode(model, "meta_transfer")
    loop = InnerLoop(model, make_loss(cfg.loss, model), cfg.adapt)
    state = checkpoint.load_checkpoint(cfg.mtl.eval_weights, {"model": list(model.variables)})
    print(f"Restored the MTL U-Net from {cfg.mtl.eval_weights} (task {state['step']})",
          flush=True)
    return eval_config(cfg), model, loop, int(state["step"])


def eval_config(cfg: Config) -> Config:
    """cfg of run_metasegnet's final evaluation of an MTL U-Net: --teshot supports and
    --test_query queries per task; its adaptation, cfg.adapt, is MTL's head adaptation as it is."""
    evaluation = dataclasses.replace(cfg.eval, shots=cfg.mtl.teshot,
                                     num_query=cfg.mtl.test_query)
    return dataclasses.replace(cfg, eval=evaluation,
                               run=dataclasses.replace(cfg.run, pretrained=True))


def pretrained_loop(cfg: Config) -> InnerLoop:
    """The pre-trained plain U-Net (--init_weights), adapting its head the MTL way (baseline).

    Args:
        cfg: the run config.

    Returns:
        InnerLoop on the plain U-Net's head.
    """
    unet = load_pretrained(cfg)
    return InnerLoop(unet, make_loss(cfg.loss, unet), cfg.adapt)
