"""The compiled inner loop: one optimizer and one traced train step per model, reused by every task.

`InnerLoop(model, loss_fn, ...)` builds, once:
* the inner optimizer (SGD, or Adam with beta1 = 0; ml4ai/mliis meta_learners/args.py), whose
slots and
  `iterations` are reset per task by `reset_optimizer()` (assign, no rebuild);
* `train_step(images, masks, indices, learning_rate, aug_rate, seed)`: one `tf.function` with an
  input signature whose batch dimension is None, so 10-shot training tasks, 5-shot evaluation
  tasks and the FOMAML* tail batch all share a single trace. The mini-batch is gathered and
  augmented (the `augmentation` named at construction; stateless, keyed by `seed`) in the graph; the
  learning rate is assigned to the optimizer inside the graph; the dropout rate is a model
  variable (`models.layers.set_dropout_rate`). Changing any of them never retraces;
* `predict(images)`: the model in inference mode (BN moving statistics), also traced once;
* `full_state`: a `meta.state.Snapshot` of the model's and the inner optimizer's variables.

* `train_steps(...)`: a task's steps in one compiled call, a graph loop over the precomputed
  mini-batch indices, seeds and learning rates that runs the same step graph as `train_step`
  and returns every step's loss (one trace for every number of steps).

`adapt()` runs a task's k steps; `on_step(steps_taken, loss) -> stop?` lets callers score every
step (UHO early stopping); with a callback the steps run one `train_step` call at a time. The adapted variables can be a subset (`variables=`; e.g. the MTL head).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from data.augmentations import augmentation_fn
from data.episodes import mini_batch_indices
from meta.config import InnerConfig
from meta.schedules import inner_learning_rate
from meta.state import Snapshot, full_state
from report.timing import section

# on_step(steps_taken, loss) -> True to stop early
StepCallback = Callable[[int, float], bool]
_SEED_HIGH = 2**31 - 1


@dataclass(frozen=True)
class AdaptationSchedule:
    """How one task is adapted: the inner loop of meta-training or test-time adaptation.

    Attributes:
        learning_rate: lr0 of the inner optimizer.
        iters: number of inner steps.
        batch_size: mini-batch size (mini-batches continue across reshuffles of the support).
        aug_rate: probability that an example is augmented; 0 disables augmentation.
        scheduler: fixed | constant | step_decay | step | cosine_anneal.
        step_decay_rate: factor of the step schedule.
        decay_after_n_steps: period of the step schedule.
        replacement: draw each mini-batch independently (reference `--replacement`).
    """

    learning_rate: float
    iters: int
    batch_size: int
    aug_rate: float = 0.0
    scheduler: str = "fixed"
    step_decay_rate: float = 0.5
    decay_after_n_steps: int = 5
    replacement: bool = False

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of 0-based inner step `step` (T = iters for cosine annealing)."""
        return inner_learning_rate(step, learning_rate=self.learning_rate,
                                   scheduler=self.scheduler, total_steps=self.iters,
                                   step_decay_rate=self.step_decay_rate,
                                   decay_after_n_steps=self.decay_after_n_steps)


def training_schedule(inner: InnerConfig) -> AdaptationSchedule:
    """The meta-training inner loop's schedule from --learning-rate, --inner-iters, ...

    Args:
        inner: the inner-loop config.

    Returns:
        AdaptationSchedule with iters = inner_iters, batch = inner_batch_size.
    """
    return AdaptationSchedule(
        learning_rate=inner.learning_rate, iters=inner.inner_iters,
        batch_size=inner.inner_batch_size, aug_rate=inner.aug_rate if inner.augment else 0.0,
        scheduler=inner.learning_rate_scheduler, step_decay_rate=inner.step_decay_rate,
        decay_after_n_steps=inner.decay_after_n_steps, replacement=inner.replacement)


def make_inner_optimizer(sgd: bool, learning_rate: float) -> keras.optimizers.Optimizer:
    """SGD, or Adam with beta1 = 0, beta2 = 0.999, epsilon = 1e-8 (ml4ai/mliis
    meta_learners/args.py).

    Args:
        sgd: plain gradient descent (--sgd).
        learning_rate: initial value of the (assignable) learning-rate variable.

    Returns:
        an unbuilt Keras optimizer.
    """
    if sgd:
        return keras.optimizers.SGD(learning_rate=learning_rate)
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.0, beta_2=0.999,
                                 epsilon=1e-8)


def gradient_step(model: keras.Model, loss_fn: Callable, variables: Sequence,
                  optimizer: keras.optimizers.Optimizer, x: tf.Tensor, y: tf.Tensor, *,
                  l2: float = 0.0, loss_scale: float | None = None) -> tf.Tensor:
    """One supervised step inside a compiled function: loss, gradients, optimizer update.

    Args:
        model: the model (training mode: dropout on, BN statistics updated).
        loss_fn: fn(y_true, y_pred) -> scalar.
        variables: the variables the step updates.
        optimizer: built on `variables`, with this step's learning rate assigned.
        x: the mini-batch of images.
        y: the targets the loss compares the prediction with.
        l2: coefficient of an L2 term added to the gradients (0 = off), as PyTorch's SGD
            weight_decay.
        loss_scale: multiply the loss by this before the gradient and divide the gradients
            after (float16 compute); a step whose gradients are not finite changes nothing.

    Returns:
        the loss before the update.
    """
    with tf.GradientTape() as tape:
        # the loss in float32 whatever the compute dtype (a no-op without mixed precision)
        probabilities = tf.cast(model(x, training=True), tf.float32)
        loss = loss_fn(y, probabilities)
        scaled = loss if loss_scale is None else loss * loss_scale
    gradients = tape.gradient(scaled, variables)
    if loss_scale is not None:
        gradients = [g / loss_scale for g in gradients]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
        gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
    if l2:
        gradients = [g + l2 * v for g, v in zip(gradients, variables)]
    optimizer.apply(gradients, variables)
    return loss


class InnerLoop:
    """One model's compiled inner loop (see the module docstring).

    Args:
        model: Keras model mapping float32 (N,S,S,3) images in [0,255] to (N,S,S,2) probabilities.
        loss_fn: fn(y_true one-hot (N,S,S,2), y_pred) -> scalar (models.losses.make_loss).
        sgd: inner optimizer is SGD (else Adam with beta1 = 0).
        learning_rate: default inner learning rate.
        weight_decay: multiply every adapted variable by this before each step (1 = off).
        variables: the variables the inner loop adapts (default: all trainable variables).
        augmentation: the batch augmentation's name (--augmentation: paper | metaseg), or None
            for a loop that never augments: its step then holds no augmentation graph, which
            spares every trace that branch (over a second for the paper's on CPU).
        jit_compile: compile the steps and the prediction with XLA (GPU; slower on CPU).
        loss_scale: multiply the loss by this before the gradient and divide the gradients
            after (float16 compute); a step whose scaled gradients are not finite changes no
            weight. None = no scaling.
    """

    def __init__(self, model: keras.Model, loss_fn: Callable, *, sgd: bool = True,
                 learning_rate: float = 1e-3, weight_decay: float = 1.0,
                 variables: Sequence | None = None, augmentation: str | None = "paper",
                 jit_compile: bool = False, loss_scale: float | None = None):
        self.model = model
        self.augment = augmentation_fn(augmentation) if augmentation is not None else None
        self.loss_scale = loss_scale
        self.loss_fn = loss_fn
        self.weight_decay = float(weight_decay)
        self.variables = list(variables) if variables is not None else \
            list(model.trainable_variables)
        if not self.variables:
            raise ValueError("InnerLoop needs at least one variable to adapt; the model has no "
                             "trainable variables.")
        self.optimizer = make_inner_optimizer(sgd, learning_rate)
        self.optimizer.build(self.variables)
        lr_var = self.optimizer.learning_rate
        self._reset_vars = [v for v in self.optimizer.variables if v is not lr_var]
        self.full_state = Snapshot(full_state(model, [self.optimizer]), name="full_state")
        size = tuple(model.input_shape[1:3])
        image_spec = tf.TensorSpec((None, *size, 3), tf.float32)
        mask_spec = tf.TensorSpec((None, *size), tf.float32)
        self._train_step = tf.function(self._train_step_graph, jit_compile=jit_compile or None,
                                       input_signature=[
            image_spec, mask_spec, tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32),
            tf.TensorSpec((2,), tf.int32)])
        self._train_steps = tf.function(self._train_steps_graph, jit_compile=jit_compile or None,
                                        input_signature=[
            image_spec, mask_spec, tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.float32),
            tf.TensorSpec((None, 2), tf.int32)])
        self._predict = tf.function(self._predict_graph, jit_compile=jit_compile or None,
                                    input_signature=[image_spec])
        self._reset = tf.function(self._reset_graph)

    # --- graphs (traced once each) -------------------------------------------------------
    def _train_step_graph(self, images, masks, indices, learning_rate, aug_rate, seed):
        x = tf.gather(images, indices)
        m = tf.gather(masks, indices)
        if self.augment is not None:
            x, m = tf.cond(aug_rate > 0.0, lambda: self.augment(x, m, aug_rate, seed),
                           lambda: (x, m))
        y = tf.one_hot(tf.cast(tf.round(m), tf.int32), 2, dtype=tf.float32)
        self.optimizer.learning_rate.assign(learning_rate)
        if self.weight_decay != 1.0:  # reference --weight-decay: shrink before every step
            for v in self.variables:
                v.assign(v * self.weight_decay)
        return gradient_step(self.model, self.loss_fn, self.variables, self.optimizer, x, y,
                             loss_scale=self.loss_scale)

    def _train_steps_graph(self, images, masks, indices, learning_rates, aug_rate, seeds):
        # A task's steps in one call: a graph loop instead of one Python dispatch per step.
        num_steps = tf.shape(indices)[0]
        losses = tf.TensorArray(tf.float32, size=num_steps)
        for t in tf.range(num_steps):
            losses = losses.write(t, self._train_step_graph(
                images, masks, indices[t], learning_rates[t], aug_rate, seeds[t]))
        return losses.stack()

    def _predict_graph(self, images):
        return tf.cast(self.model(images, training=False), tf.float32)

    def _reset_graph(self):
        for v in self._reset_vars:
            v.assign(tf.zeros_like(v))

    # --- public API ----------------------------------------------------------------------
    def reset_optimizer(self) -> None:
        """Zero the inner optimizer's slots and iteration count (a fresh optimizer per task)."""
        self._reset()

    def train_step(self, images: tf.Tensor, masks: tf.Tensor, indices, learning_rate: float,
                   aug_rate: float, seed) -> tf.Tensor:
        """One optimizer step on the mini-batch `images[indices]`.

        Args:
            images: float32 (n,S,S,3) in [0,255]: the task's support images (a tensor).
            masks: float32 (n,S,S) in {0,1}.
            indices: int (b,) indices of this step's mini-batch.
            learning_rate: lr of this step.
            aug_rate: probability that an example is augmented (0 = none).
            seed: int (2,) stateless-RNG key of the augmentation.

        Returns:
            the scalar loss tensor before the update.
        """
        self._check_aug_rate(aug_rate)
        return self._train_step(images, masks, tf.convert_to_tensor(indices, tf.int32),
                                tf.constant(learning_rate, tf.float32),
                                tf.constant(aug_rate, tf.float32),
                                tf.convert_to_tensor(seed, tf.int32))

    def train_steps(self, images: tf.Tensor, masks: tf.Tensor, indices, learning_rates,
                    aug_rate: float, seeds) -> tf.Tensor:
        """len(indices) optimizer steps in one compiled call, each exactly as `train_step`.

        Args:
            images, masks: the task's support tensors (see train_step).
            indices: int (steps, b) mini-batch indices.
            learning_rates: float (steps,) lr of each step.
            aug_rate: probability that an example is augmented (0 = none).
            seeds: int (steps, 2) augmentation keys.

        Returns:
            float32 (steps,) tensor: each step's loss before its update.
        """
        self._check_aug_rate(aug_rate)
        return self._train_steps(images, masks, tf.convert_to_tensor(indices, tf.int32),
                                 tf.convert_to_tensor(learning_rates, tf.float32),
                                 tf.constant(aug_rate, tf.float32),
                                 tf.convert_to_tensor(seeds, tf.int32))

    def _check_aug_rate(self, aug_rate: float) -> None:
        if self.augment is None and aug_rate > 0.0:
            raise ValueError(f"this inner loop was built without augmentation (augmentation=None) "
                             f"but was asked for aug_rate={aug_rate}; build it with the "
                             f"augmentation's name.")

    def predict(self, images) -> tf.Tensor:
        """Foreground/background probabilities in inference mode.

        Args:
            images: (N,S,S,3) in [0,255] (uint8 or float).

        Returns:
            float32 tensor (N,S,S,2).
        """
        return self._predict(tf.convert_to_tensor(np.asarray(images, np.float32)
                                                  if not tf.is_tensor(images) else
                                                  tf.cast(images, tf.float32)))

    @property
    def trace_counts(self) -> dict[str, int]:
        """How often each compiled function has been traced (tests assert this stays bounded)."""
        return {"train_step": self._train_step.experimental_get_tracing_count(),
                "train_steps": self._train_steps.experimental_get_tracing_count(),
                "predict": self._predict.experimental_get_tracing_count()}


@dataclass(frozen=True)
class AdaptResult:
    """Outcome of one task's adaptation.

    Attributes:
        steps_taken: inner steps run (fewer than schedule.iters when on_step stopped early).
        losses: float32 (steps_taken,) loss of each step.
    """

    steps_taken: int
    losses: np.ndarray


def support_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 support arrays -> float32 tensors, converted once per task.

    Args:
        images: (k,S,S,3) in 0..255.
        masks: (k,S,S) in {0,1}.

    Returns:
        (images float32 (k,S,S,3), masks float32 (k,S,S)).
    """
    with section("support_tensors"):
        return (tf.convert_to_tensor(np.asarray(images, np.float32)),
                tf.convert_to_tensor(np.asarray(masks, np.float32)))


def draw_batches(rng: np.random.Generator, num_examples: int,
                 schedule: AdaptationSchedule, num_steps: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The mini-batch indices and augmentation seeds of an adaptation, drawn from `rng`.

    Args:
        rng: the run's generator.
        num_examples: support size.
        schedule: batch size, replacement.
        num_steps: steps to draw (default schedule.iters).

    Returns:
        (indices int32 (steps, batch), seeds int32 (steps, 2)).
    """
    with section("sampling"):
        return _draw_batches(rng, num_examples, schedule, num_steps)


def _draw_batches(rng, num_examples, schedule, num_steps):
    steps = schedule.iters if num_steps is None else num_steps
    indices = mini_batch_indices(rng, num_examples, schedule.batch_size, steps,
                                 replacement=schedule.replacement).astype(np.int32)
    seeds = rng.integers(0, _SEED_HIGH, size=(steps, 2), dtype=np.int64).astype(np.int32)
    return indices, seeds


def run_steps(loop: InnerLoop, images: tf.Tensor, masks: tf.Tensor, indices: np.ndarray,
              seeds: np.ndarray, schedule: AdaptationSchedule, *, first_step: int = 0,
              aug_rate: float | None = None, on_step: StepCallback | None = None
              ) -> AdaptResult:
    """Run len(indices) inner steps (no optimizer reset), step t at schedule lr(first_step + t).

    Args:
        loop: the compiled inner loop.
        images, masks: support tensors (support_tensors()).
        indices: (steps, batch) mini-batch indices.
        seeds: (steps, 2) augmentation seeds.
        schedule: learning-rate schedule and augmentation rate.
        first_step: index of the first step within the whole adaptation (for the lr schedule).
        aug_rate: overrides schedule.aug_rate (the FOMAML* tail step passes 0).
        on_step: called after every step with (steps taken so far, loss); True stops.

    Returns:
        AdaptResult.
    """
    rate = schedule.aug_rate if aug_rate is None else aug_rate
    losses = []
    with section("inner_steps"):
        if on_step is None and len(indices):
            rates = [schedule.learning_rate_at(first_step + t) for t in range(len(indices))]
            values = loop.train_steps(images, masks, indices, rates, rate, seeds).numpy()
            return AdaptResult(steps_taken=len(values), losses=values)
        # A callback sees every step before the next one runs, so its steps run one by one.
        for t in range(len(indices)):
            loss = loop.train_step(images, masks, indices[t],
                                   schedule.learning_rate_at(first_step + t), rate, seeds[t])
            losses.append(loss)
            if on_step is not None and on_step(first_step + t + 1, float(loss)):
                break
        values = tf.stack(losses).numpy() if losses else np.zeros(0, np.float32)
    return AdaptResult(steps_taken=len(losses), losses=values)


def adapt(loop: InnerLoop, images: np.ndarray, masks: np.ndarray, schedule: AdaptationSchedule,
          rng: np.random.Generator, *, on_step: StepCallback | None = None,
          progress: Callable[[int, int], None] | None = None,
          progress_chunks: int = 10) -> AdaptResult:
    """Fine-tune the loop's variables on one task's support set (fresh optimizer state).

    Args:
        loop: the compiled inner loop.
        images: (k,S,S,3) support images (uint8 or float in 0..255).
        masks: (k,S,S) support masks in {0,1}.
        schedule: the adaptation schedule.
        rng: draws the mini-batches and augmentation seeds.
        on_step: optional (steps_taken, loss) -> stop callback, e.g. UHO early stopping.
        progress: optional (steps done, steps in all) callback: the fused steps then run in
            `progress_chunks` compiled calls instead of one, each the same step graph on the
            same mini-batches, so the result is the same.
        progress_chunks: how many reports `progress` gets at most.

    Returns:
        AdaptResult.
    """
    x, m = support_tensors(images, masks)
    indices, seeds = draw_batches(rng, len(x), schedule)
    with section("snapshots"):
        loop.reset_optimizer()
    if progress is None or on_step is not None or not len(indices):
        return run_steps(loop, x, m, indices, seeds, schedule, on_step=on_step)
    chunk = -(-len(indices) // max(1, progress_chunks))
    losses = []
    for start in range(0, len(indices), chunk):
        part = run_steps(loop, x, m, indices[start:start + chunk], seeds[start:start + chunk],
                         schedule, first_step=start)
        losses.append(part.losses)
        progress(start + part.steps_taken, len(indices))
    values = np.concatenate(losses)
    return AdaptResult(steps_taken=len(values), losses=values)
