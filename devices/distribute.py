"""Meta-batches and evaluations spread over replicas (local devices, or worker processes).

A meta-batch's tasks adapt independently and meet only in the meta-update, so each replica
adapts its share of them on its own copy of the model. The inner-loop weights of two replicas
diverge during adaptation, so they cannot be mirrored variables: every local replica owns a
plain Keras model and `InnerLoop` built on its device (replica 0 is the run's own model). After
the tasks, each replica packs its direction sum, its loss sum and (replica 0 only) the model's
other float state into one vector, the strategy all-reduces those vectors with its collective
ops, and every replica applies the same meta-update, so the replicas stay identical.

Placement never changes a result: in a distributed run task k of a meta-batch draws from its own
generator `default_rng(seed_k)`, `seed_k` drawn from the training generator, and reseeds the
model's dropout / drop-connect generators from it, so a task computes the same direction on any
replica. (A run without `--distribute` keeps the single stream of earlier versions.)
Batch-norm moving statistics carry over between the tasks a replica runs, as on one device, and
global replica 0's are broadcast to all after each meta-iteration; they do not change the
meta-learned weights, which use batch statistics during adaptation.

Device setup (`configure_devices`) must run before TensorFlow initializes its devices: on a
machine without GPUs, `num_replicas` N > 1 splits the CPU into N logical devices.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from data.tasks import ClassData
from meta.algorithms import MetaLearner
from meta.config import MetaConfig
from meta.inner import AdaptationSchedule, InnerLoop
from storage.timing import section

DISTRIBUTE_MODES = ("none", "mirrored", "multi_worker")
_SEED_HIGH = 2**31 - 1


def configure_devices(mode: str, num_replicas: int) -> None:
    """Split the CPU into `num_replicas` logical devices when there is no GPU (before TF starts).

    Args:
        mode: none | mirrored | multi_worker.
        num_replicas: replicas on this machine (1 = no split).

    Raises:
        ValueError: unknown mode, num_replicas < 1, or TF's devices are already initialized.
    """
    if mode not in DISTRIBUTE_MODES:
        raise ValueError(f"--distribute must be one of {DISTRIBUTE_MODES}. Received: {mode!r}")
    if num_replicas < 1:
        raise ValueError(f"--num_replicas must be >= 1. Received: {num_replicas}")
    # MultiWorkerMirroredStrategy places one replica per GPU, or one per worker on CPU.
    if mode != "mirrored" or num_replicas == 1 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_replicas)])
    except RuntimeError as e:
        raise ValueError("--num_replicas must be set up before TensorFlow initializes its "
                         "devices; start a fresh process.") from e


def make_strategy(mode: str, num_replicas: int) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy of --distribute (None for none).

    Args:
        mode: mirrored (this machine's GPUs, else its logical CPUs) | multi_worker (the
            cluster in TF_CONFIG, one replica per worker per GPU, or per CPU).
        num_replicas: local replicas for mirrored (0 = every GPU).

    Returns:
        the strategy, or None.
    """
    if mode == "none":
        return None
    if mode == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    if num_replicas > len(devices):
        raise ValueError(f"--num_replicas {num_replicas} but this machine has {len(devices)} "
                         f"devices ({', '.join(devices)}).")
    return tf.distribute.MirroredStrategy(devices=devices[:num_replicas or len(devices)])


def _float_state(model) -> list:
    """The model's non-trainable float variables (BN statistics, dropout rate)."""
    return [v for v in model.variables if not v.trainable and "float" in str(v.dtype)]


def _seed_states(model) -> list:
    """The state variables of the model's dropout / drop-connect seed generators."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


class Replicas:
    """A strategy's replicas, each with its own copy of the model and its own inner loop.

    Args:
        strategy: MirroredStrategy or MultiWorkerMirroredStrategy.
        loop: the run's inner loop (global replica 0 of this worker).
        make_loop: builds another InnerLoop of the same architecture (called on each further
            local device).
    """

    def __init__(self, strategy: tf.distribute.Strategy, loop: InnerLoop,
                 make_loop: Callable[[], InnerLoop]):
        self.strategy = strategy
        self.devices = list(strategy.extended.worker_devices)
        self.num_replicas = int(strategy.num_replicas_in_sync)
        resolver = getattr(strategy, "cluster_resolver", None)
        self.worker_index = int(resolver.task_id or 0) if resolver is not None and \
            resolver.cluster_spec().as_dict() else 0
        self.first_id = self.worker_index * len(self.devices)
        self.is_chief = bool(strategy.extended.should_checkpoint)
        self.loops = [loop]
        for device in self.devices[1:]:
            with tf.device(device):
                self.loops.append(make_loop())
        self._copies = [tf.function(self._copy_graph(loop.model.variables, other.model.variables))
                        for other in self.loops[1:]]
        self._pool = ThreadPoolExecutor(len(self.loops)) if len(self.loops) > 1 else None
        self.sync()

    @staticmethod
    def _copy_graph(sources, targets):
        if len(sources) != len(targets):
            raise ValueError("replica models differ in their variables; build them alike.")

        def copy():
            for s, t in zip(sources, targets):
                t.assign(s)
        return copy

    @property
    def global_ids(self) -> list[int]:
        """Global replica index of each local replica."""
        return [self.first_id + i for i in range(len(self.loops))]

    def sync(self) -> None:
        """Copy every model variable of local replica 0 into the other local replicas."""
        for copy in self._copies:
            copy()

    def map_local(self, fn: Callable[[int], object]) -> list:
        """fn(local_index) on every local replica, concurrently, each under its device."""
        def run(i):
            with tf.device(self.devices[i]):
                return fn(i)
        if self._pool is None:
            return [run(0)]
        return list(self._pool.map(run, range(len(self.loops))))

    def all_reduce_sum(self, vectors: Sequence[tf.Tensor]) -> tf.Tensor:
        """Sum one 1-D float32 vector per local replica over all replicas of all workers."""
        with section("all_reduce"):
            values = self.strategy.experimental_distribute_values_from_function(
                lambda ctx: vectors[ctx.replica_id_in_sync_group - self.first_id])
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

    def spread(self, num_items: int, run_item: Callable[[InnerLoop, int], np.ndarray],
               width: int) -> np.ndarray:
        """Run item p on global replica p % R; every worker gets every item's float32 row.

        Args:
            num_items: items to run.
            run_item: (loop, item) -> float32 (width,) row (exact for integers below 2**24).
            width: row length.

        Returns:
            float32 (num_items, width), rows in item order.
        """
        self.sync()

        def work(i):
            rows = np.zeros((num_items, width), np.float32)
            for p in range(self.global_ids[i], num_items, self.num_replicas):
                rows[p] = run_item(self.loops[i], p)
            return tf.constant(rows.reshape(-1))
        total = self.all_reduce_sum(self.map_local(work))
        return total.numpy().reshape(num_items, width)


class DistributedMetaLearner:
    """`MetaLearner` over replicas: the same interface (loop, outer_optimizer, meta_step).

    Args:
        replicas: the replicas and their inner loops.
        meta: the meta config.
        schedule: the training inner-loop schedule.
    """

    def __init__(self, replicas: Replicas, meta: MetaConfig, schedule: AdaptationSchedule):
        self.replicas = replicas
        self.learners = []
        for device, loop in zip(replicas.devices, replicas.loops):
            with tf.device(device):
                self.learners.append(MetaLearner(loop, meta, schedule))
        main = self.learners[0]
        self.loop, self.schedule = main.loop, main.schedule
        self.outer_optimizer, self.start, self.before_last = \
            main.outer_optimizer, main.start, main.before_last
        self._unpack = [tf.function(self._unpack_graph(lrn)) for lrn in self.learners]
        self._pack = [tf.function(self._pack_graph(lrn)) for lrn in self.learners]
        self._reseed = [tf.function(self._reseed_graph(lrn.loop.model)) for lrn in self.learners]

    def checkpoint_groups(self) -> dict[str, list]:
        """The main replica's groups: every replica holds the same weights after a meta-step."""
        return self.learners[0].checkpoint_groups()

    @staticmethod
    def _pack_graph(learner: MetaLearner):
        state = _float_state(learner.loop.model)

        def pack(loss_sum, count, with_state):
            parts = [tf.reshape(s, [-1]) for s in learner._sum] + [tf.stack([loss_sum, count])]
            parts += [tf.reshape(tf.cast(v, tf.float32), [-1]) * with_state for v in state]
            return tf.concat(parts, 0)
        return pack

    @staticmethod
    def _unpack_graph(learner: MetaLearner):
        state = _float_state(learner.loop.model)
        targets = list(learner._sum)

        def unpack(vector):
            offset = 0
            for t in targets:
                n = int(np.prod(t.shape))
                t.assign(tf.reshape(vector[offset:offset + n], t.shape))
                offset += n
            losses = vector[offset:offset + 2]
            offset += 2
            for v in state:
                n = int(np.prod(v.shape))
                v.assign(tf.cast(tf.reshape(vector[offset:offset + n], v.shape), v.dtype))
                offset += n
            return losses
        return unpack

    @staticmethod
    def _reseed_graph(model):
        states = _seed_states(model)

        def reseed(seed):
            for i, v in enumerate(states):
                v.assign(tf.cast(tf.stack([seed[0], seed[1] + i]), v.dtype))
        return reseed

    def meta_step(self, tasks: Sequence[ClassData], rng: np.random.Generator,
                  meta_step_size: float) -> float:
        """Each replica adapts its tasks; all-reduce; the same meta-update everywhere.

        Args:
            tasks: the meta-batch (the same on every worker).
            rng: the training generator (the same state on every worker).
            meta_step_size: epsilon of this meta-iteration.

        Returns:
            mean inner-loop loss over all steps of all tasks.
        """
        seeds = rng.integers(0, _SEED_HIGH, size=(len(tasks), 2)).astype(np.int32)
        self.replicas.sync()
        num = self.replicas.num_replicas

        def work(i):
            learner, first = self.learners[i], self.replicas.global_ids[i]
            with section("snapshots"):
                learner.start.save()
            loss_sum, count = 0.0, 0
            for k in range(first, len(tasks), num):
                with section("sampling"):
                    self._reseed[i](tf.constant(seeds[k]))
                    task_rng = np.random.default_rng(seeds[k].tolist())
                direction, losses = learner.direction(learner.loop, tasks[k], learner.schedule,
                                                      task_rng, start=learner.start,
                                                      before_last=learner.before_last)
                with section("directions"):
                    learner._accumulate(direction)
                with section("snapshots"):
                    learner.start.restore()
                loss_sum += float(np.sum(losses))
                count += len(losses)
            with section("all_reduce"):
                return self._pack[i](tf.constant(loss_sum, tf.float32),
                                     tf.constant(float(count), tf.float32),
                                     tf.constant(1.0 if first == 0 else 0.0))
        total = self.replicas.all_reduce_sum(self.replicas.map_local(work))
        losses = None
        with section("meta_update"):
            for learner, unpack in zip(self.learners, self._unpack):
                losses = unpack(total).numpy()
                learner.outer_optimizer.learning_rate.assign(meta_step_size)
                learner._apply_mean(tf.constant(len(tasks), tf.float32))
        return float(losses[0] / losses[1])
