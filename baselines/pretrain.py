"""Phase 1 of meta-transfer learning: conventional supervised training of the plain U-Net.

Every image of every meta-train class goes into one pooled binary segmentation problem (the
foreground of whichever class the image shows), in shuffled mini-batches of `pre_batch_size`.
Optimizer as the original (ahirsharan/MTL-Segmentation models/mtl.py): SGD with Nesterov momentum
`pre_custom_momentum`
and L2 weight decay `pre_custom_weight_decay` added to every gradient (PyTorch's coupled
`weight_decay`, over all trainable variables), learning rate `pre_lr` decayed by `pre_gamma`
every `pre_step_size` epochs.

After every epoch the val mIoU is measured with the shared evaluation (`adapt.evaluate`): on
`monitor_tasks` val episodes, the same ones every epoch so epochs compare on equal data, the head
alone adapts for `update_step` SGD steps at `base_lr` on `shot` support pairs (as MTL adapts it
later) and `val_query` queries are scored. Only meta-train classes are trained on and only val
classes select; the meta-test classes are never touched. The weights with the best val mIoU are
kept in `best.weights.h5`.

Outputs in `run_dir`: best.weights.h5 + best.json, a checkpoint after every epoch
(`storage.checkpoint`; rerunning the command resumes), training_log.csv and tensorboard/
(`report.logs`; one row per epoch, `meta_iter` = epochs completed, `meta_step_size` = the learning
rate).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from adapt.config import EvalConfig
from adapt.evaluate import evaluate
from baselines.config import MTLConfig
from data.augment import augment_batch
from data.splits import Splits
from data.tasks import ClassData, pool_classes
from errors import DivergenceError
from meta.adaptation import Adaptation
from meta.inner import InnerLoop, gradient_step
from meta.streams import STREAM_PRETRAIN
from models.build import build_model
from models.config import ModelConfig
from models.mtl import load_pretrained_unet
from storage import atomic, checkpoint
from report.logs import TrainingLog

BEST_WEIGHTS = "best.weights.h5"
BEST_INFO = "best.json"
_SEED_HIGH = 2**31 - 1


@dataclass(frozen=True)
class PretrainResult:
    """Outcome of pre-training.

    Attributes:
        best_path: the best weights file (max val mIoU).
        best_epoch: epochs completed when they were reached (1-based).
        best_val_miou: their val mIoU.
        epochs: epochs completed in all.
    """

    best_path: str
    best_epoch: int
    best_val_miou: float
    epochs: int


def pre_train_learning_rate(epoch: int, *, pre_lr: float, pre_gamma: float,
                            pre_step_size: int) -> float:
    """StepLR: pre_lr * pre_gamma ** (epoch // pre_step_size).

    Args:
        epoch: 0-based epoch.
        pre_lr: initial learning rate.
        pre_gamma: decay factor.
        pre_step_size: epochs between decays.

    Returns:
        the learning rate as a Python float.
    """
    return float(pre_lr * pre_gamma ** (epoch // pre_step_size))


class PretrainStep:
    """One compiled supervised step (traced once; lr, augmentation rate and seed are inputs).

    Args:
        model: the plain U-Net.
        loss_fn: fn(y_true one-hot, y_pred) -> scalar.
        momentum: Nesterov momentum.
        weight_decay: L2 coefficient added to the gradients (0 = off).
    """

    def __init__(self, model: keras.Model, loss_fn: Callable, *, momentum: float,
                 weight_decay: float):
        self.model, self.loss_fn, self.weight_decay = model, loss_fn, float(weight_decay)
        self.variables = list(model.trainable_variables)
        self.optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=momentum,
                                              nesterov=momentum > 0)
        self.optimizer.build(self.variables)
        size = tuple(model.input_shape[1:3])
        self._step = tf.function(self._graph, input_signature=[
            tf.TensorSpec((None, *size, 3), tf.float32), tf.TensorSpec((None, *size), tf.float32),
            tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32),
            tf.TensorSpec((2,), tf.int32)])

    def _graph(self, images, masks, learning_rate, aug_rate, seed):
        x, m = tf.cond(aug_rate > 0.0, lambda: augment_batch(images, masks, aug_rate, seed),
                       lambda: (images, masks))
        self.optimizer.learning_rate.assign(learning_rate)
        # PyTorch SGD weight_decay: g + wd * w, before momentum
        return gradient_step(self.model, self.loss_fn, self.variables, self.optimizer, x,
                             self.targets(m), l2=self.weight_decay)

    def targets(self, masks: tf.Tensor) -> tf.Tensor:
        """What the loss compares the prediction with: one-hot (b, S, S, 2) of the {0,1} masks."""
        return tf.one_hot(tf.cast(tf.round(masks), tf.int32), 2, dtype=tf.float32)

    def __call__(self, images: np.ndarray, masks: np.ndarray, learning_rate: float,
                 aug_rate: float, seed) -> tf.Tensor:
        """One step on a mini-batch.

        Args:
            images: (b,S,S,3) in 0..255.
            masks: (b,S,S) in {0,1}.
            learning_rate: this step's learning rate.
            aug_rate: probability that an example is augmented (0 = none).
            seed: int (2,) stateless-RNG key of the augmentation.

        Returns:
            the scalar loss before the update.
        """
        return self._step(tf.constant(images, tf.float32), tf.constant(masks, tf.float32),
                          tf.constant(learning_rate, tf.float32), tf.constant(aug_rate, tf.float32),
                          tf.constant(seed, tf.int32))


def saved_num_classes(path: str) -> int:
    """Head channels of a pre-trained .weights.h5: from best.json, else config.json beside it."""
    folder = os.path.dirname(os.path.abspath(path))
    for name, read in ((BEST_INFO, lambda d: d.get("num_classes")),
                       ("config.json", lambda d: d.get("model", {}).get("num_classes"))):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as f:
                value = read(json.load(f))
            if value:
                return int(value)
    return 2


def load_pre_trained(path: str, cfg: ModelConfig) -> tuple[keras.Model, list[str], int]:
    """The pre-trained plain U-Net of `path` (`pre_train/best.weights.h5`) with a
    `cfg.num_classes`-channel head: the one loader of the MTL phases and the segmenter.

    A K-class pre-training (K != cfg.num_classes) loads everything but its head; the head starts
    fresh (seeded glorot-uniform kernel, zero bias).

    Args:
        path: the weights file.
        cfg: the U-Net flags (model_name is taken as unet).

    Returns:
        (the U-Net, the paths of its head variables left fresh ([] when the head loaded), the
        saved head's class count).
    """
    unet_cfg = dataclasses.replace(cfg, model_name="unet")
    saved = saved_num_classes(path)
    unet = build_model(dataclasses.replace(unet_cfg, num_classes=saved))
    unet.load_weights(path)
    if saved == cfg.num_classes:
        return unet, [], saved
    fresh = build_model(unet_cfg)
    return fresh, load_pretrained_unet(fresh, unet, keep_head=False), saved


def _save_best(run_dir: str, model: keras.Model, epoch: int, val_miou: float,
               extra: dict | None = None) -> str:
    path = os.path.join(run_dir, BEST_WEIGHTS)
    tmp = os.path.join(run_dir, f".tmp-{os.getpid()}.{BEST_WEIGHTS}")  # Keras wants .weights.h5
    model.save_weights(tmp)
    os.replace(tmp, path)
    info = os.path.join(run_dir, BEST_INFO)
    atomic.write_json(info, {"epoch": epoch, "val_miou": val_miou,
                             "num_classes": int(model.output_shape[-1]), **(extra or {})})
    return path


def pre_train(model: keras.Model, loss_fn: Callable, tasks: Mapping[str, ClassData],
              splits: Splits, *, mtl: MTLConfig, adaptation: Adaptation, monitor_tasks: int,
              aug_rate: float, seed: int, rng: np.random.Generator, run_dir: str,
              config_json: str, stop_after: int | None = None) -> PretrainResult:
    """Train the plain U-Net on the pooled meta-train classes, keeping the best val weights.

    Args:
        model: the plain U-Net (head `final_layer_weights`).
        loss_fn: its loss (models.losses.make_loss).
        tasks: class name -> ClassData.
        splits: class splits: trains on splits.train, selects on splits.val.
        mtl: pre_max_epoch, pre_batch_size, pre_lr, pre_gamma, pre_step_size,
            pre_custom_weight_decay, pre_custom_momentum; shot, val_query for the val episodes.
        adaptation: the head's adaptation on the val episodes
            (`meta.adaptation.head_adaptation`); its dropout rate is the training's too.
        monitor_tasks: val episodes per epoch.
        aug_rate: augmentation probability of the training batches (0 = none).
        seed: run seed (val episodes).
        rng: the training generator (shuffles, augmentation seeds; checkpointed).
        run_dir: output directory.
        config_json: the run's resolved config, stored in every checkpoint.
        stop_after: stop once this many epochs are completed (tests, interruption).

    Returns:
        PretrainResult.

    Raises:
        ValueError: no val classes.
        DivergenceError: an epoch's loss is not finite.
    """
    if not splits.val:
        raise ValueError("pre_train keeps the weights with the best val mIoU, so it needs val "
                         "classes: pass --num_val_tasks N (>= 1).")
    images, masks = pool_classes(tasks, splits.train)
    step = PretrainStep(model, loss_fn, momentum=mtl.pre_custom_momentum,
                        weight_decay=mtl.pre_custom_weight_decay)
    val_loop = InnerLoop(model, loss_fn, adaptation)
    val_loop.set_dropout_rate(adaptation.dropout_rate)  # the training steps' (each val episode
    # restores the full state, this rate included)

    def validate() -> tuple[float, float]:
        result = evaluate(val_loop, tasks, splits.val, adaptation,
                          EvalConfig(shots=mtl.shot, num_query=mtl.val_query, transductive=False,
                                     eval_samples=monitor_tasks,
                                     serially_eval_all_test_tasks=False),
                          seed=seed, stream=STREAM_PRETRAIN, split="val")
        return result.mean_iou, result.mean_query_loss

    return train_epochs(model, step, images, masks, validate, mtl=mtl, aug_rate=aug_rate,
                        rng=rng, run_dir=run_dir, config_json=config_json,
                        stop_after=stop_after)


def train_epochs(model: keras.Model, step: PretrainStep, images: np.ndarray, targets: np.ndarray,
                 validate: Callable[[], tuple[float, float]], *, mtl: MTLConfig, aug_rate: float,
                 rng: np.random.Generator, run_dir: str, config_json: str,
                 stop_after: int | None = None, best_info: dict | None = None) -> PretrainResult:
    """The pre-training epochs: shuffled mini-batches, StepLR, val after each epoch, resume.

    Args:
        model: the network trained by `step`.
        step: the compiled supervised step.
        images: uint8 (N, S, S, 3) training images.
        targets: uint8 (N, S, S) masks or class ids, as `step.targets` reads them.
        validate: () -> (val mIoU of the current weights (higher is better), val loss).
        mtl: pre_max_epoch, pre_batch_size, pre_lr, pre_gamma, pre_step_size.
        aug_rate: augmentation probability of the training batches (0 = none).
        rng: the training generator (shuffles, augmentation seeds; checkpointed).
        run_dir: output directory (checkpoint per epoch, best weights, logs).
        config_json: the run's resolved config, stored in every checkpoint.
        stop_after: stop once this many epochs are completed (tests, interruption).
        best_info: more fields for best.json (e.g. the number of classes).

    Returns:
        PretrainResult.

    Raises:
        DivergenceError: an epoch's loss is not finite.
    """
    os.makedirs(run_dir, exist_ok=True)
    groups = checkpoint.variable_groups(model, optimizer=step.optimizer)
    start, best_epoch, best_miou = 0, 0, -math.inf
    state = checkpoint.resume(run_dir, groups, rng)  # model and optimizer, then the RNG
    if state is not None:
        start, best_epoch, best_miou = state["step"], state["best_epoch"], state["best_val_miou"]
        logging.info(f"Resuming pre-training from {state['path']} after epoch {start}")
    end = mtl.pre_max_epoch if stop_after is None else min(stop_after, mtl.pre_max_epoch)
    log = TrainingLog(run_dir, start_step=start)
    try:
        for epoch in range(start, end):
            began = time.monotonic()
            lr = pre_train_learning_rate(epoch, pre_lr=mtl.pre_lr, pre_gamma=mtl.pre_gamma,
                                         pre_step_size=mtl.pre_step_size)
            order = rng.permutation(len(images))
            losses = []
            for b in range(0, len(order), mtl.pre_batch_size):
                batch = order[b:b + mtl.pre_batch_size]
                key = rng.integers(0, _SEED_HIGH, size=2)
                losses.append(step(images[batch], targets[batch], lr, aug_rate, key))
            loss = float(np.mean(tf.stack(losses).numpy()))
            done = epoch + 1
            if not math.isfinite(loss):
                raise DivergenceError(f"Non-finite pre-training loss ({loss}) in epoch {done}; "
                                      f"lower --pre_lr.")
            val_miou, val_loss = validate()
            if val_miou > best_miou:
                best_epoch, best_miou = done, val_miou
                _save_best(run_dir, model, done, best_miou, best_info)
            seconds = time.monotonic() - began
            log.log(done, meta_step_size=lr, loss=loss, seconds=seconds, val_miou=val_miou,
                    val_loss=val_loss)
            checkpoint.save_checkpoint(run_dir, done, groups, rng_state=rng.bit_generator.state,
                                       config_json=config_json, keep=1,
                                       extra={"best_epoch": best_epoch,
                                              "best_val_miou": best_miou})
            logging.info(f"Pre-train epoch {done}/{mtl.pre_max_epoch}: lr={lr:.3g} "
                         f"loss={loss:.4f} val loss={val_loss:.4f} val mIoU={val_miou:.4f} "
                         f"(best {best_miou:.4f} at epoch {best_epoch}) {seconds:.1f}s")
    finally:
        log.close()
    return PretrainResult(best_path=os.path.join(run_dir, BEST_WEIGHTS), best_epoch=best_epoch,
                          best_val_miou=best_miou, epochs=max(end, start))
