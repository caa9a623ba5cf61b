"""Meta-batches and evaluations spread over replicas (local devices, or worker processes).

A meta-batch's tasks adapt independently and meet only in the meta-update, so each replica
adapts its share of them on its own copy of the model. The inner-loop weights of two replicas
diverge during adaptation, so they cannot be mirrored variables: every local replica owns a
plain Keras model and `InnerLoop` built on its device (replica 0 is the run's own model). After
the tasks, each replica packs its tasks' directions (each in its task's slot), its loss sum, its
batch-norm statistics and (replica 0 only) the model's other float state into one vector, the
strategy all-reduces those vectors with its collective ops, and every replica applies the same
meta-update, so the replicas stay identical.

Placement never changes a result: task k of a meta-batch draws from its own generator and
reseeds the model's dropout generators from its own seed (`meta.streams`, `per_task`), exactly
as on one device, so a task computes the same direction on any replica; the directions are
summed in slot order on every replica, as on one device, so 1 or N replicas or workers end with
the same meta-learned weights. (Summed per replica first, their float rounding would differ,
and Adam's inner steps, which scale tiny gradients up to the learning rate, would grow that
into visible differences within a few meta-iterations.) Batch-norm moving statistics carry over
between the tasks a replica runs, as on one device, and after each meta-iteration every replica
takes the mean of all replicas' statistics (docs/performance.md says how that differs from one
device's); they do not change the meta-learned weights, which use batch statistics during
adaptation.

Device setup (`configure_devices`) must run before TensorFlow initializes its devices: on a
machine without GPUs, `num_replicas` N > 1 splits the CPU into N logical devices.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from errors import UserError
from data.tasks import ClassData
from devices.cluster import stop_on_sigterm, tf_config_cluster, wait_for_workers
from meta.algorithms import MetaLearner
from meta.config import MetaConfig
from meta.inner import InnerLoop
from meta.streams import ONE_STREAM
from report.timing import section

DISTRIBUTE_MODES = ("none", "mirrored", "multi_worker")


def local_replicas(num_replicas: int, num_gpus: int) -> int:
    """How many local replicas --distribute mirrored runs.

    Args:
        num_replicas: --num_replicas (0 = every visible GPU).
        num_gpus: the GPUs TensorFlow sees on this machine.

    Returns:
        the number of replicas.

    Raises:
        ValueError: --num_replicas 0 without a GPU, or more GPUs asked for than there are.
    """
    if num_replicas < 0:
        raise ValueError(f"--num_replicas must be >= 0 (0 = every GPU). Received: {num_replicas}")
    if num_replicas == 0 and num_gpus == 0:
        raise ValueError("--num_replicas 0 means every GPU, and TensorFlow sees none on this "
                         "machine; pass --num_replicas N to split the CPU into N logical devices "
                         "(or check CUDA_VISIBLE_DEVICES).")
    if num_gpus and num_replicas > num_gpus:
        raise ValueError(f"--num_replicas {num_replicas} but TensorFlow sees {num_gpus} GPU(s) "
                         f"on this machine; pass --num_replicas {num_gpus} or 0 (every GPU).")
    return num_replicas or num_gpus


def configure_devices(mode: str, num_replicas: int) -> None:
    """Split the CPU into `num_replicas` logical devices when there is no GPU (before TF starts).

    Args:
        mode: none | mirrored | multi_worker.
        num_replicas: replicas on this machine (1 = no split; 0 = every GPU, with mirrored).

    Raises:
        ValueError: unknown mode, a replica count this machine cannot give, or TF's devices are
            already initialized.
    """
    if mode not in DISTRIBUTE_MODES:
        raise ValueError(f"--distribute must be one of {DISTRIBUTE_MODES}. Received: {mode!r}")
    if mode != "mirrored":
        return  # MultiWorkerMirroredStrategy places one replica per GPU, or one per worker on CPU
    gpus = tf.config.list_physical_devices("GPU")
    replicas = local_replicas(num_replicas, len(gpus))
    if replicas == 1 or gpus:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
    except RuntimeError as e:
        raise ValueError("--num_replicas must be set up before TensorFlow initializes its "
                         "devices; start a fresh process.") from e


def make_strategy(mode: str, num_replicas: int,
                  worker_start_timeout: float = 600.0) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy of --distribute (None for none).

    Args:
        mode: mirrored (this machine's GPUs, else its logical CPUs) | multi_worker (the
            cluster in TF_CONFIG, one replica per worker per GPU, or per CPU).
        num_replicas: local replicas for mirrored (0 = every GPU).
        worker_start_timeout: multi_worker: seconds to wait for the other workers to start.

    Returns:
        the strategy, or None.
    """
    if mode == "none":
        return None
    if mode == "multi_worker":
        return _multi_worker_strategy(worker_start_timeout)
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    if num_replicas > len(devices):
        raise ValueError(f"--num_replicas {num_replicas} but this machine has {len(devices)} "
                         f"devices ({', '.join(devices)}).")
    return tf.distribute.MirroredStrategy(devices=devices[:num_replicas or len(devices)])


def _multi_worker_strategy(timeout: float) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy once every worker of TF_CONFIG has started (devices.cluster)."""
    cluster = tf_config_cluster()
    wait_for_workers(cluster, timeout, log=logging.info)
    # TensorFlow's own registration of the workers, bounded by the same timeout (its default
    # waits forever; the strategy keeps a coordination service configured before it).
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # noqa: PLC0415
    from tensorflow.python.eager import context  # noqa: PLC0415
    if context.context().coordination_service is None:
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader=f"/job:{'chief' if 'chief' in cluster.jobs else 'worker'}"
                           f"/replica:0/task:0",
            cluster_register_timeout_in_ms=int(timeout * 1000),
            coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
                name=job, num_tasks=len(cluster.jobs[job]))
                for job in ("chief", "worker") if job in cluster.jobs])
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as e:
        peers = ", ".join(f"{label} ({address})" for label, address in cluster.peers())
        raise UserError(f"The workers of TF_CONFIG ({peers}) did not all register within "
                        f"--worker_start_timeout {timeout:g} s "
                        f"({e.message.splitlines()[0]}); restart every worker.") from e
    stop_on_sigterm()  # TensorFlow's server installed a SIGTERM handler that does nothing
    return strategy


def _moving_statistics(model) -> list:
    """The model's batch-norm moving means and variances (averaged over the replicas)."""
    return [v for v in model.variables if not v.trainable and "float" in str(v.dtype)
            and ("moving_mean" in v.path or "moving_variance" in v.path)]


def _other_float_state(model) -> list:
    """The model's other non-trainable float variables (the dropout rate): replica 0's."""
    return [v for v in model.variables if not v.trainable and "float" in str(v.dtype)
            and "moving_mean" not in v.path and "moving_variance" not in v.path]


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
    """`MetaLearner` over replicas: the same interface (loop, outer_optimizer, meta_step), through
    each replica's learner's public face (theta, run_task, settle_seeds, direction_sum, apply).

    Each replica flattens the direction of each of its tasks into that task's slot of one vector
    (zeros in the other slots); the all-reduce sums the vectors, which adds only zeros to each
    direction, so every replica gets every direction exactly and sums them in slot order, as a
    run on one device does: the meta-update is bit for bit the same on any placement.

    Args:
        replicas: the replicas and their inner loops.
        meta: the meta config (its `inner` is every task's adaptation).
    """

    def __init__(self, replicas: Replicas, meta: MetaConfig):
        if meta.task_streams == ONE_STREAM:
            raise ValueError("This run draws every task from one random stream (a run written "
                             "without --distribute by an earlier version), which only one device "
                             "continues exactly: resume it without --distribute, or start a fresh "
                             "--checkpoint.")
        self.replicas = replicas
        self.learners = []
        for device, loop in zip(replicas.devices, replicas.loops):
            with tf.device(device):
                self.learners.append(MetaLearner(loop, meta))
        main = self.learners[0]
        self.loop, self.adaptation = main.loop, main.adaptation
        self.outer_optimizer, self.theta = main.outer_optimizer, main.theta
        self._size = sum(int(np.prod(v.shape)) for v in main.loop.variables)
        self._flatten = [tf.function(_flatten) for _ in self.learners]
        self._unpack = [tf.function(_unpack_graph(lrn, self._size)) for lrn in self.learners]
        self._pack = [tf.function(_pack_graph(lrn)) for lrn in self.learners]

    def checkpoint_groups(self) -> dict[str, list]:
        """The main replica's groups: every replica holds the same weights after a meta-step."""
        return self.learners[0].checkpoint_groups()

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
        seeds, generators = self.learners[0].task_generators(rng, len(tasks))
        self.replicas.sync()
        num = self.replicas.num_replicas

        def work(i):
            learner, first = self.learners[i], self.replicas.global_ids[i]
            learner.theta.save()
            slots = [None] * len(tasks)
            loss_sum, count = 0.0, 0
            for k in range(first, len(tasks), num):
                direction, losses = learner.run_task(tasks[k], generators[k], seeds[k])
                with section("directions"):
                    slots[k] = self._flatten[i](direction)
                loss_sum += float(np.sum(losses))
                count += len(losses)
            learner.settle_seeds(seeds)
            with section("all_reduce"):
                empty = tf.zeros([self._size], tf.float32)
                return self._pack[i](tf.concat([empty if s is None else s for s in slots], 0),
                                     tf.constant(loss_sum, tf.float32),
                                     tf.constant(float(count), tf.float32),
                                     tf.constant(1.0 if first == 0 else 0.0))
        total = self.replicas.all_reduce_sum(self.replicas.map_local(work))
        losses = None
        for learner, unpack in zip(self.learners, self._unpack):
            with section("meta_update"):
                losses = unpack(total, len(tasks)).numpy()
            learner.apply(len(tasks), meta_step_size)
        return float(losses[0] / losses[1])


def _flatten(direction):
    """A task's direction as one float32 vector (its slot in the all-reduce)."""
    return tf.concat([tf.reshape(tf.cast(d, tf.float32), [-1]) for d in direction], 0)


def _pack_graph(learner: MetaLearner):
    """(slots, loss sum, count, is replica 0) -> the vector a replica all-reduces."""
    statistics = _moving_statistics(learner.loop.model)
    other = _other_float_state(learner.loop.model)

    def pack(slots, loss_sum, count, is_first):
        # A replica without a task this meta-iteration (meta-batch < replicas) holds the start's
        # statistics; it is left out of their mean.
        ran = tf.cast(count > 0, tf.float32)
        parts = [slots, tf.stack([loss_sum, count, ran])]
        parts += [tf.reshape(tf.cast(v, tf.float32), [-1]) * ran for v in statistics]
        parts += [tf.reshape(tf.cast(v, tf.float32), [-1]) * is_first for v in other]
        return tf.concat(parts, 0)
    return pack


def _unpack_graph(learner: MetaLearner, size: int):
    """(the all-reduced vector, meta-batch size) -> the direction sum in slot order, the mean BN
    statistics, replica 0's other float state; returns (loss sum, step count)."""
    statistics = _moving_statistics(learner.loop.model)
    other = _other_float_state(learner.loop.model)
    targets = list(learner.direction_sum)

    def unpack(vector, num_tasks):
        for k in range(num_tasks):  # the order a single device adds them in
            offset = k * size
            for t in targets:
                n = int(np.prod(t.shape))
                t.assign_add(tf.reshape(vector[offset:offset + n], t.shape))
                offset += n
        offset = num_tasks * size
        losses, replicas_ran = vector[offset:offset + 2], vector[offset + 2]
        offset += 3
        for v in statistics:  # the sum over the replicas that ran tasks -> their mean
            n = int(np.prod(v.shape))
            v.assign(tf.cast(tf.reshape(vector[offset:offset + n], v.shape) / replicas_ran,
                             v.dtype))
            offset += n
        for v in other:
            n = int(np.prod(v.shape))
            v.assign(tf.cast(tf.reshape(vector[offset:offset + n], v.shape), v.dtype))
            offset += n
        return losses
    return unpack
