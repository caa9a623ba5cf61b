"""Reptile, FOMAML and FOMAML*: one "update direction" per task, one meta-update per meta-batch.

The algorithms differ only in what a task contributes (as in openai/supervised-reptile; here
after ml4ai/mliis meta_learners/supervised_reptile/supervised_reptile/reptile.py, Gecko and FOMLIS):
* Reptile: d = phi - theta, the whole adaptation's displacement.
* FOMAML: d = phi_after - phi_before of the *last* inner step only, i.e. -lr * grad for SGD.
* FOMAML* (`foml_tail=T`): the task's `train_shots` pairs are split into train_shots - T pairs for
  the first inner_iters - 1 steps and T held-out "tail" pairs that form the last step's batch,
  unaugmented; d is that last step's update, a gradient on data the earlier steps never saw.

The meta-update theta <- theta + epsilon * mean_i d_i is applied as the pseudo-gradient
-mean_i d_i to an SGD outer optimizer whose learning rate is the annealed epsilon, so
the outer state is an ordinary, checkpointable Keras optimizer. Only the adapted variables are
meta-updated; BN moving statistics are never reset and carry over between tasks, as in the
original. The inner optimizer starts fresh on every task. Each task draws from its own generator
(`meta.streams`, `per_task`), so where it runs never changes its direction.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from data.episodes import sample_episode
from data.tasks import ClassData
from meta import weights
from meta.adaptation import Adaptation
from meta.config import MetaConfig
from meta.inner import InnerLoop, adapt, draw_batches, run_steps, support_tensors
from meta.state import Snapshot
from meta.streams import ONE_STREAM, task_seeds
from report.timing import section

# direction(loop, images, masks, adaptation, rng, theta) -> (d, per-step losses)
Direction = Callable[..., tuple[list[tf.Tensor], np.ndarray]]


def reptile_direction(loop: InnerLoop, images: np.ndarray, masks: np.ndarray,
                      adaptation: Adaptation, rng: np.random.Generator,
                      theta: Snapshot) -> tuple[list[tf.Tensor], np.ndarray]:
    """Adapt on the task's pairs; return phi - theta.

    Args:
        loop: the compiled inner loop (its variables hold theta on entry).
        images: (k,S,S,3) the task's pairs' images.
        masks: (k,S,S) their masks.
        adaptation: the inner loop's steps, batch, learning-rate schedule, augmentation.
        rng: draws the mini-batches and augmentation seeds.
        theta: the snapshot holding theta (read, not restored here).

    Returns:
        (d = phi - theta per variable, per-step losses).
    """
    result = adapt(loop, images, masks, adaptation, rng)
    return theta.difference(), result.losses


def split_tail(rng: np.random.Generator, num_pairs: int, tail_shots: int,
               with_replacement: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the FOMAML* train part and held-out tail (ml4ai/mliis
    meta_learners/supervised_reptile/supervised_reptile/reptile.py).

    Args:
        rng: the run's generator.
        num_pairs: pairs sampled for the task (train_shots).
        tail_shots: T, pairs held out for the last step.
        with_replacement: draw num_pairs - T train and T tail indices independently, each
            index of the pairs any number of times (--sample_foml_train_val_with_replacement;
            the parts may overlap).

    Returns:
        (train indices (num_pairs - T,), tail indices (T,)); disjoint unless with_replacement.
    """
    if not 1 <= tail_shots < num_pairs:
        raise ValueError(f"--foml-tail must be in [1, --train-shots - 1] = [1, {num_pairs - 1}]. "
                         f"Received: {tail_shots}")
    if with_replacement:
        return (rng.integers(0, num_pairs, size=num_pairs - tail_shots),
                rng.integers(0, num_pairs, size=tail_shots))
    order = rng.permutation(num_pairs)
    return order[:num_pairs - tail_shots], order[num_pairs - tail_shots:]


def fomaml_direction(loop: InnerLoop, images: np.ndarray, masks: np.ndarray,
                     adaptation: Adaptation, rng: np.random.Generator, theta: Snapshot, *,
                     before_last: Snapshot, tail_shots: int | None = None,
                     tail_with_replacement: bool = False) -> tuple[list[tf.Tensor], np.ndarray]:
    """Adapt for adaptation.steps steps; return the last step's update (FOMAML / FOMAML*).

    Args:
        loop: the compiled inner loop.
        images, masks: the task's pairs.
        adaptation: the inner loop's schedule.
        rng: draws the split, mini-batches and augmentation seeds.
        theta: unused (the learner restores it).
        before_last: this direction's own snapshot of the weights before the last step.
        tail_shots: T for FOMAML*; None is plain FOMAML (the last step is an ordinary batch).
        tail_with_replacement: --sample_foml_train_val_with_replacement.

    Returns:
        (d = phi_after - phi_before of the last step, per-step losses).
    """
    del theta
    last_step = adaptation.steps - 1
    loop.reset_optimizer()
    if tail_shots is None:
        x, m = support_tensors(images, masks)
        indices, seeds = draw_batches(rng, len(images), adaptation)
        head = run_steps(loop, x, m, indices[:-1], seeds[:-1], adaptation)
        before_last.save()
        last = run_steps(loop, x, m, indices[-1:], seeds[-1:], adaptation, first_step=last_step)
    else:
        train, tail = split_tail(rng, len(images), tail_shots, tail_with_replacement)
        x, m = support_tensors(images[train], masks[train])
        indices, seeds = draw_batches(rng, len(train), adaptation, last_step)
        head = run_steps(loop, x, m, indices, seeds, adaptation)
        before_last.save()
        tail_x, tail_m = support_tensors(images[tail], masks[tail])
        tail_seed = rng.integers(0, 2**31 - 1, size=(1, 2)).astype(np.int32)
        # The whole tail is one batch and is not augmented (ml4ai/mliis
        # meta_learners/supervised_reptile/supervised_reptile/reptile.py).
        last = run_steps(loop, tail_x, tail_m, np.arange(len(tail), dtype=np.int32)[None],
                         tail_seed, adaptation, first_step=last_step, aug_rate=0.0)
    return before_last.difference(), np.concatenate([head.losses, last.losses])


def make_direction(meta: MetaConfig, loop: InnerLoop) -> Direction:
    """The per-task update direction of the configured algorithm, owning its snapshots.

    Args:
        meta: algorithm ("reptile" | "fomaml"), foml_tail, sample_foml_train_val_with_replacement.
        loop: the inner loop the direction adapts.

    Returns:
        a `Direction` callable with the algorithm's settings bound.
    """
    if meta.algorithm == "reptile":
        return reptile_direction
    if meta.algorithm == "fomaml":
        return partial(fomaml_direction, tail_shots=meta.foml_tail,
                       before_last=Snapshot(loop.variables, name="before_last_step"),
                       tail_with_replacement=meta.sample_foml_train_val_with_replacement)
    raise ValueError(f"algorithm must be 'reptile' or 'fomaml'. Received: {meta.algorithm!r}")


class MetaLearner:
    """Meta-batches of task directions turned into outer-optimizer steps.

    Args:
        loop: the compiled inner loop; its `variables` are the meta-learned variables.
        meta: the meta config (algorithm, train_shots, and `inner`, every task's adaptation).
    """

    def __init__(self, loop: InnerLoop, meta: MetaConfig):
        adaptation = meta.inner
        if meta.foml_tail is not None and adaptation.steps < 2:
            raise ValueError(f"FOMAML* runs inner_iters - 1 steps on the train part and one on "
                             f"the tail; it needs --inner-iters >= 2. Received: {adaptation.steps}")
        if meta.algorithm == "fomaml" and adaptation.steps < 1:
            raise ValueError("FOMAML needs --inner-iters >= 1.")
        loop.check(adaptation)
        self.loop = loop
        self.adaptation = adaptation
        self.train_shots = meta.train_shots
        self.direction = make_direction(meta, loop)
        self.theta = Snapshot(loop.variables, name="theta")
        self.outer_optimizer = keras.optimizers.SGD(learning_rate=meta.meta_step_size)
        self.outer_optimizer.build(loop.variables)
        with tf.init_scope():
            self.direction_sum = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                              name=f"direction_sum_{i}")
                                  for i, v in enumerate(loop.variables)]
        self._accumulate = tf.function(self._accumulate_graph)
        self._apply = tf.function(self._apply_graph)
        self.task_streams = meta.task_streams
        self._reseed = tf.function(_reseed_graph(_seed_states(loop.model)))

    def checkpoint_groups(self) -> dict[str, list]:
        """What a meta-training checkpoint holds: the model, inner and outer optimizer state."""
        return {"model": list(self.loop.model.variables),
                "inner_optimizer": list(self.loop.optimizer.variables),
                "outer_optimizer": list(self.outer_optimizer.variables)}

    def _accumulate_graph(self, direction):
        for total, d in zip(self.direction_sum, direction):
            total.assign_add(d)

    def _apply_graph(self, num_tasks, meta_step_size):
        # theta <- theta + epsilon * mean(d): the pseudo-gradient -mean(d) through outer SGD.
        self.outer_optimizer.learning_rate.assign(meta_step_size)
        self.outer_optimizer.apply(weights.scale(self.direction_sum, -1.0 / num_tasks),
                                   self.loop.variables)
        for total in self.direction_sum:
            total.assign(tf.zeros_like(total))

    def accumulate(self, direction: Sequence[tf.Tensor]) -> None:
        """Add one task's direction to the meta-batch's sum (in the order tasks are summed)."""
        with section("directions"):
            self._accumulate(direction)

    def apply(self, num_tasks: int, meta_step_size: float) -> None:
        """theta <- theta + meta_step_size * (sum of directions) / num_tasks; the sum restarts."""
        with section("meta_update"):
            self._apply(tf.constant(num_tasks, tf.float32),
                        tf.constant(meta_step_size, tf.float32))

    def task_generators(self, rng: np.random.Generator, num_tasks: int
                        ) -> tuple[np.ndarray | None, list[np.random.Generator]]:
        """The seeds and generators of a meta-batch's task slots (`meta.streams`).

        Args:
            rng: the training generator.
            num_tasks: the meta-batch size.

        Returns:
            (int32 (num_tasks, 2) seeds, or None with `one_stream`; one generator per slot).
        """
        if self.task_streams == ONE_STREAM:
            return None, [rng] * num_tasks
        with section("sampling"):
            seeds = task_seeds(rng, num_tasks)
            return seeds, [np.random.default_rng(seed.tolist()) for seed in seeds]

    def run_task(self, class_data: ClassData, rng: np.random.Generator,
                 seed: np.ndarray | None) -> tuple[list[tf.Tensor], np.ndarray]:
        """Draw a task of the class, adapt from theta (held by `theta`), restore theta.

        Args:
            class_data: the task's class.
            rng: the task's generator.
            seed: its int32 (2,) seed, which reseeds the dropout generators (None: left as
                they are, `one_stream`).

        Returns:
            (the task's direction, its per-step losses).
        """
        with section("sampling"):
            if seed is not None:
                self._reseed(tf.constant(seed))
            episode = sample_episode(rng, class_data, self.train_shots, 0)
        direction, losses = self.direction(self.loop, episode.support_images,
                                           episode.support_masks, self.adaptation, rng,
                                           self.theta)
        self.theta.restore()  # model state only: BN statistics carry over
        return direction, losses

    def settle_seeds(self, seeds: np.ndarray | None) -> None:
        """Reseed the dropout generators from the meta-batch's seeds after its tasks, so they hold
        the same state whichever replica ran the last task (evaluations draw from them)."""
        if seeds is not None:
            self._reseed(tf.constant(seeds[-1][::-1].copy()))

    def meta_step(self, tasks: Sequence[ClassData], rng: np.random.Generator,
                  meta_step_size: float) -> float:
        """Adapt on each task from theta, then move theta by epsilon * mean direction.

        Args:
            tasks: the meta-batch (classes; repeats allowed).
            rng: the training generator (task seeds, or every draw with `one_stream`).
            meta_step_size: epsilon of this meta-iteration.

        Returns:
            mean inner-loop loss over all steps of all tasks.
        """
        self.theta.save()
        seeds, generators = self.task_generators(rng, len(tasks))
        losses = []
        for k, class_data in enumerate(tasks):  # summed in slot order, as on any placement
            direction, task_losses = self.run_task(class_data, generators[k],
                                                   None if seeds is None else seeds[k])
            self.accumulate(direction)
            losses.append(task_losses)
        self.settle_seeds(seeds)
        self.apply(len(tasks), meta_step_size)
        return float(np.mean(np.concatenate(losses)))


def _seed_states(model) -> list:
    """The state variables of the model's dropout / drop-connect seed generators."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _reseed_graph(states: Sequence):
    def reseed(seed):
        for i, v in enumerate(states):
            v.assign(tf.cast(tf.stack([seed[0], seed[1] + i]), v.dtype))
    return reseed
