"""Meta-transfer learning (Sun et al., CVPR 2019) of a pre-trained, frozen U-Net.

The base kernels and biases of the pre-trained U-Net stay frozen (`models.mtl.set_mtl_mode(model,
"meta_transfer")`); what is meta-learned (ahirsharan/MTL-Segmentation models/mtl.py):
* the per-channel scale (init 1) and shift (init 0) of every convolution, and the batch-norm
  gamma/beta: Adam at `meta_lr1`;
* the initial weights of the head (the final 1x1 conv `final_layer_weights`, the "base
  learner"): Adam at `meta_lr2`.

Per task (`MTLLearner.meta_step`): the head alone adapts for `update_step` SGD steps at `base_lr`
on the task's `shot` support pairs (the shared compiled inner loop, restricted to the head's
variables), then the loss on its `train_query` query pairs, computed with the adapted head,
gives the outer gradients. First-order, as the original (no create-graph): the query loss's
gradient at the adapted head is the head init's meta-gradient, and the encoder gets its gradient
through the query features only. The head is then reset to its init and both Adam optimizers
step. Both learning rates decay by `gamma` every `step_size` epochs of `num_batch` tasks
(`meta_learning_rate`, fed to `meta.train.meta_train` as its step-size schedule), so task
sampling, the periodic monitor, checkpoints and logs are the ones Reptile/FOMAML use.

Adaptation, in meta-training's tasks and at evaluation alike, is the run's `Adaptation`: for the
MTL phases `meta.adaptation.head_adaptation` (the head alone, `update_step` full-batch SGD steps at
`base_lr`, no augmentation), built once by args.py and recorded in config.json. Evaluation is
EfficientLab's (`adapt.evaluate`) with it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from baselines.config import MTLConfig
from data.episodes import sample_episode
from data.tasks import ClassData
from meta.adaptation import Adaptation
from meta.config import MetaConfig
from meta.inner import InnerLoop, adapt
from meta.state import Snapshot


def meta_learning_rate(step: int, *, initial: float, num_batch: int, step_size: int,
                       gamma: float) -> float:
    """StepLR over epochs: initial * gamma ** (epoch // step_size), epoch = step // num_batch.

    Args:
        step: 0-based task (outer step) index.
        initial: learning rate of epoch 0 (meta_lr1 or meta_lr2).
        num_batch: tasks per epoch (--num_batch).
        step_size: epochs between decays (--step_size).
        gamma: decay factor (--gamma).

    Returns:
        the learning rate as a Python float.
    """
    return float(initial * gamma ** ((step // num_batch) // step_size))


def mtl_meta_config(mtl: MTLConfig, meta: MetaConfig) -> MetaConfig:
    """The outer-loop settings meta.train.meta_train runs MTL with.

    One task per outer step, `max_epoch * num_batch` of them, the periodic monitor and checkpoint
    once per epoch. `meta_step_size` is meta_lr1 only for the record: the StepLR schedule
    (`meta_learning_rate`) replaces the linear anneal.

    Args:
        mtl: the MTL config.
        meta: the run's MetaConfig (monitor_tasks, keep_checkpoints, seed are kept).

    Returns:
        MetaConfig.
    """
    return dataclasses.replace(meta, algorithm="reptile", foml_tail=None, meta_batch_size=1,
                               meta_iters=mtl.max_epoch * mtl.num_batch,
                               eval_interval=mtl.num_batch, meta_step_size=mtl.meta_lr1,
                               meta_step_size_final=mtl.meta_lr1)


class MTLLearner:
    """Per task: adapt the head on the support set, then one outer step from the query loss.

    Has the interface `meta.train.meta_train` drives (`loop`, `meta_step(tasks, rng, lr)`).

    Args:
        loop: the inner loop of an MTL U-Net in "meta_transfer" mode, built for `adaptation`.
        mtl: the MTL config (shot, train_query, meta_lr1, meta_lr2).
        adaptation: the head's adaptation (`meta.adaptation.head_adaptation`).
    """

    def __init__(self, loop: InnerLoop, mtl: MTLConfig, adaptation: Adaptation):
        if not adaptation.head_only:
            raise ValueError("MTL meta-training adapts the head alone: pass an adaptation with "
                             "head_only (meta.adaptation.head_adaptation).")
        loop.check(adaptation)
        self.loop = loop
        self.model = loop.model
        self.mtl = mtl
        self.adaptation = adaptation
        self.head = list(loop.variables)
        head_ids = {id(v) for v in self.head}
        # Scale/shift and batch-norm gamma/beta: everything trainable outside the head. Frozen
        # base kernels are not trainable, so they can never receive an update.
        self.meta_variables = [v for v in self.model.trainable_variables
                               if id(v) not in head_ids]
        if not self.meta_variables:
            raise ValueError("MTL meta-training found no trainable scale/shift or batch-norm "
                             "variables outside the head; call models.mtl.set_mtl_mode(model, "
                             "'meta_transfer') on an MTL U-Net first.")
        self.head_init = Snapshot(self.head, name="head_init")
        self.ss_optimizer = keras.optimizers.Adam(learning_rate=mtl.meta_lr1)
        self.head_optimizer = keras.optimizers.Adam(learning_rate=mtl.meta_lr2)
        self.ss_optimizer.build(self.meta_variables)
        self.head_optimizer.build(self.head)
        size = tuple(self.model.input_shape[1:3])
        self._outer_step = tf.function(self._outer_graph, input_signature=[
            tf.TensorSpec((None, *size, 3), tf.float32), tf.TensorSpec((None, *size), tf.float32),
            tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32)])

    @property
    def outer_optimizers(self) -> list[keras.optimizers.Optimizer]:
        """The two Adam optimizers (scale/shift + BN, head init), for checkpoints."""
        return [self.ss_optimizer, self.head_optimizer]

    def checkpoint_groups(self) -> dict[str, list]:
        """The model, the head's inner optimizer, and both outer optimizers as one group."""
        return {"model": list(self.model.variables),
                "inner_optimizer": list(self.loop.optimizer.variables),
                "outer_optimizer": [v for o in self.outer_optimizers for v in o.variables]}

    def _outer_graph(self, images, masks, meta_lr1, meta_lr2):
        y = tf.one_hot(tf.cast(tf.round(masks), tf.int32), 2, dtype=tf.float32)
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            loss = self.loop.loss_fn(y, probabilities)
        gradients = tape.gradient(loss, self.meta_variables + self.head)
        missing = [v.path for v, g in zip(self.meta_variables + self.head, gradients) if g is None]
        if missing:  # checked while tracing: a variable the query loss cannot reach
            raise ValueError(f"The query loss does not depend on {missing}; MTL cannot "
                             f"meta-learn them.")
        n = len(self.meta_variables)
        # First-order MTL: the gradient at the adapted head updates the head's init.
        for v, init in zip(self.head, self.head_init.values):
            v.assign(init)
        self.ss_optimizer.learning_rate.assign(meta_lr1)
        self.head_optimizer.learning_rate.assign(meta_lr2)
        self.ss_optimizer.apply(gradients[:n], self.meta_variables)
        self.head_optimizer.apply(gradients[n:], self.head)
        return loss

    def task_step(self, class_data: ClassData, rng: np.random.Generator, meta_lr1: float,
                  meta_lr2: float) -> tuple[float, np.ndarray]:
        """Adapt the head on one task's support set, then update the meta-parameters.

        Args:
            class_data: the task's class.
            rng: draws the support/query pairs and the mini-batch order.
            meta_lr1: learning rate of scale/shift and BN gamma/beta.
            meta_lr2: learning rate of the head init.

        Returns:
            (query loss after adaptation, inner-loop losses per step).
        """
        episode = sample_episode(rng, class_data, self.mtl.shot, self.mtl.train_query)
        self.head_init.save()
        inner = adapt(self.loop, episode.support_images, episode.support_masks, self.adaptation,
                      rng)
        loss = self._outer_step(tf.constant(episode.query_images, tf.float32),
                                tf.constant(episode.query_masks, tf.float32),
                                tf.constant(meta_lr1, tf.float32),
                                tf.constant(meta_lr2, tf.float32))
        return float(loss), inner.losses

    def meta_step(self, tasks: Sequence[ClassData], rng: np.random.Generator,
                  meta_step_size: float) -> float:
        """One outer step per task (MTL's meta-batch is one task), at meta_lr1 = meta_step_size.

        Args:
            tasks: the classes of this meta-iteration.
            rng: the training generator.
            meta_step_size: this step's meta_lr1 (StepLR); meta_lr2 keeps its ratio to it.

        Returns:
            mean query loss after adaptation.
        """
        meta_lr2 = meta_step_size * self.mtl.meta_lr2 / self.mtl.meta_lr1
        losses = [self.task_step(c, rng, meta_step_size, meta_lr2)[0] for c in tasks]
        return float(np.mean(losses))
