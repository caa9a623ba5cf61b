"""The compiled inner loop: one optimizer and one traced train step per model, reused by every task.

`InnerLoop(model, loss_fn, adaptation)` builds, once, what an `meta.adaptation.Adaptation` fixes
(`LOOP_SETTINGS`: SGD or Adam, weight decay, the augmentation's graph, the adapted variables):
* the inner optimizer (SGD, or Adam with beta1 = 0; ml4ai/mliis meta_learners/args.py), whose
  slots and `iterations` are reset per task by `reset_optimizer()` (assign, no rebuild);
* `train_step(images, masks, indices, learning_rate, aug_rate, seed)`: one `tf.function` with an
  input signature whose batch dimension is None, so 10-shot training tasks, 5-shot evaluation
  tasks and the FOMAML* tail batch all share a single trace. The mini-batch is gathered and
  augmented (stateless, keyed by `seed`) in the graph; the learning rate is assigned to the
  optimizer inside the graph; the dropout rate is a model variable (`models.layers`). Changing
  any of them never retraces;
* `train_steps(...)`: a task's steps in one compiled call, a graph loop over the precomputed
  mini-batch indices, seeds and learning rates that runs the same step graph as `train_step`
  and returns every step's loss (one trace for every number of steps);
* `predict(images)`: the model in inference mode (BN moving statistics), also traced once;
* `full_state`: a `meta.state.Snapshot` of the model's and the inner optimizer's variables.

`adapt(loop, images, masks, adaptation, rng)` runs a task's steps; with `on_step(steps_taken,
loss) -> stop?` (UHO's early stopping) they run one `train_step` call at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from data.augmentations import augmentation_fn
from data.episodes import mini_batch_indices
from meta.adaptation import Adaptation
from meta.state import Snapshot, full_state
from models.layers import dropout_rate_variables
from models.mtl import head_variables
from models.parts import variables_from_block
from report.timing import section

# on_step(steps_taken, loss) -> True to stop early
StepCallback = Callable[[int, float], bool]
_SEED_HIGH = 2**31 - 1


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


def adapted_variables(model: keras.Model, adaptation: Adaptation) -> list:
    """The variables an adaptation changes: the head's alone (head_only), or every trainable one
    but the encoder's blocks before adapt_encoder_from_block.

    Args:
        model: a model from models.build.build_model.
        adaptation: the adaptation.

    Returns:
        list of variables.
    """
    if adaptation.head_only:
        return head_variables(model)
    return variables_from_block(model, adaptation.adapt_encoder_from_block)


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
        adaptation: what the loop is built for: its LOOP_SETTINGS (optimizer, weight decay,
            augmentation, adapted variables); every adaptation run on it must agree on them.
        augment: build the augmentation's graph (default: when adaptation.aug_rate > 0). A loop
            that never augments holds no augmentation graph, which spares every trace that
            branch (over a second for the paper's on CPU); UHO, which searches the rate, asks
            for it.
        jit_compile: compile the steps and the prediction with XLA (GPU; slower on CPU).
        loss_scale: multiply the loss by this before the gradient and divide the gradients
            after (float16 compute); a step whose scaled gradients are not finite changes no
            weight. None = no scaling.
    """

    def __init__(self, model: keras.Model, loss_fn: Callable, adaptation: Adaptation, *,
                 augment: bool | None = None, jit_compile: bool = False,
                 loss_scale: float | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self.settings = adaptation.loop_settings()
        augment = adaptation.aug_rate > 0 if augment is None else augment
        self.augment = augmentation_fn(adaptation.augmentation) if augment else None
        self.loss_scale = loss_scale
        self.weight_decay = float(adaptation.weight_decay)
        self.variables = adapted_variables(model, adaptation)
        if not self.variables:
            raise ValueError("InnerLoop needs at least one variable to adapt; the model has no "
                             "trainable variables.")
        self._dropout_rates = dropout_rate_variables(model)
        self.optimizer = make_inner_optimizer(adaptation.sgd, adaptation.learning_rate)
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
    def check(self, adaptation: Adaptation) -> None:
        """Refuse an adaptation whose LOOP_SETTINGS differ from the loop's (it needs a new loop).

        Raises:
            ValueError: naming the settings, or augmentation asked of a loop built without it.
        """
        self._check_aug_rate(adaptation.aug_rate)
        wanted = adaptation.loop_settings()
        if adaptation.aug_rate == 0.0:  # the augmentation graph is not run
            wanted["augmentation"] = self.settings["augmentation"]
        differ = {k: (self.settings[k], v) for k, v in wanted.items() if self.settings[k] != v}
        if differ:
            raise ValueError(f"this inner loop was built for other settings ({differ}, built vs "
                             f"asked); build an InnerLoop for this adaptation.")

    def set_dropout_rate(self, rate: float) -> None:
        """Set the head dropout of the model (a variable: no compiled step retraces)."""
        if not self._dropout_rates and rate > 0:
            raise ValueError(f"dropout_rate {rate} asked of model {self.model.name!r}, which has "
                             f"no VariableDropout layer.")
        for variable in self._dropout_rates:
            variable.assign(float(rate))

    def reset_optimizer(self) -> None:
        """Zero the inner optimizer's slots and iteration count (a fresh optimizer per task)."""
        with section("snapshots"):
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
        with section("inner_steps"):
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
        with section("inner_steps"):
            return self._train_steps(images, masks, tf.convert_to_tensor(indices, tf.int32),
                                     tf.convert_to_tensor(learning_rates, tf.float32),
                                     tf.constant(aug_rate, tf.float32),
                                     tf.convert_to_tensor(seeds, tf.int32))

    def _check_aug_rate(self, aug_rate: float) -> None:
        if self.augment is None and aug_rate > 0.0:
            raise ValueError(f"this inner loop was built without augmentation but was asked for "
                             f"aug_rate={aug_rate}; build it with augment=True.")

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
        steps_taken: inner steps run (fewer than adaptation.steps when on_step stopped early).
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


def draw_batches(rng: np.random.Generator, num_examples: int, adaptation: Adaptation,
                 num_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mini-batch indices and augmentation seeds of an adaptation, drawn from `rng`.

    Args:
        rng: the run's generator.
        num_examples: support size.
        adaptation: batch size and replacement.
        num_steps: steps to draw (default adaptation.steps).

    Returns:
        (indices int32 (steps, batch), seeds int32 (steps, 2)).
    """
    with section("sampling"):
        steps = adaptation.steps if num_steps is None else num_steps
        indices = mini_batch_indices(rng, num_examples, adaptation.batch_for(num_examples), steps,
                                     replacement=adaptation.replacement).astype(np.int32)
        seeds = rng.integers(0, _SEED_HIGH, size=(steps, 2), dtype=np.int64).astype(np.int32)
    return indices, seeds


def run_steps(loop: InnerLoop, images: tf.Tensor, masks: tf.Tensor, indices: np.ndarray,
              seeds: np.ndarray, adaptation: Adaptation, *, first_step: int = 0,
              aug_rate: float | None = None, on_step: StepCallback | None = None
              ) -> AdaptResult:
    """Run len(indices) inner steps (no optimizer reset), step t at the lr of first_step + t.

    Args:
        loop: the compiled inner loop.
        images, masks: support tensors (support_tensors()).
        indices: (steps, batch) mini-batch indices.
        seeds: (steps, 2) augmentation seeds.
        adaptation: learning-rate schedule, augmentation rate, dropout.
        first_step: index of the first step within the whole adaptation (for the lr schedule).
        aug_rate: overrides adaptation.aug_rate (the FOMAML* tail step passes 0).
        on_step: called after every step with (steps taken so far, loss); True stops.

    Returns:
        AdaptResult.
    """
    rate = adaptation.aug_rate if aug_rate is None else aug_rate
    loop.set_dropout_rate(adaptation.dropout_rate)
    if on_step is None and len(indices):
        rates = [adaptation.learning_rate_at(first_step + t) for t in range(len(indices))]
        values = loop.train_steps(images, masks, indices, rates, rate, seeds).numpy()
        return AdaptResult(steps_taken=len(values), losses=values)
    # A callback sees every step before the next one runs, so its steps run one by one.
    losses = []
    for t in range(len(indices)):
        loss = loop.train_step(images, masks, indices[t],
                               adaptation.learning_rate_at(first_step + t), rate, seeds[t])
        losses.append(loss)
        if on_step is not None and on_step(first_step + t + 1, float(loss)):
            break
    values = tf.stack(losses).numpy() if losses else np.zeros(0, np.float32)
    return AdaptResult(steps_taken=len(losses), losses=values)


def adapt(loop: InnerLoop, images: np.ndarray, masks: np.ndarray, adaptation: Adaptation,
          rng: np.random.Generator, *, on_step: StepCallback | None = None,
          progress: Callable[[int, int], None] | None = None,
          progress_chunks: int = 10) -> AdaptResult:
    """Fine-tune the loop's variables on one task's support set (fresh optimizer state).

    Args:
        loop: the compiled inner loop (built for the adaptation's LOOP_SETTINGS).
        images: (k,S,S,3) support images (uint8 or float in 0..255).
        masks: (k,S,S) support masks in {0,1}.
        adaptation: steps, batch size, learning-rate schedule, augmentation, dropout.
        rng: draws the mini-batches and augmentation seeds.
        on_step: optional (steps_taken, loss) -> stop callback, e.g. UHO early stopping.
        progress: optional (steps done, steps in all) callback: the fused steps then run in
            `progress_chunks` compiled calls instead of one, each the same step graph on the
            same mini-batches, so the result is the same.
        progress_chunks: how many reports `progress` gets at most.

    Returns:
        AdaptResult.
    """
    loop.check(adaptation)
    x, m = support_tensors(images, masks)
    indices, seeds = draw_batches(rng, len(x), adaptation)
    loop.reset_optimizer()
    if progress is None or on_step is not None or not len(indices):
        return run_steps(loop, x, m, indices, seeds, adaptation, on_step=on_step)
    chunk = -(-len(indices) // max(1, progress_chunks))
    losses = []
    for start in range(0, len(indices), chunk):
        part = run_steps(loop, x, m, indices[start:start + chunk], seeds[start:start + chunk],
                         adaptation, first_step=start)
        losses.append(part.losses)
        progress(start + part.steps_taken, len(indices))
    values = np.concatenate(losses)
    return AdaptResult(steps_taken=len(values), losses=values)
