"""The cluster of --distribute multi_worker: TF_CONFIG checked, and the start of every worker
awaited in Python, where a timeout, SIGTERM and Ctrl-C can end the wait.

TensorFlow waits for a cluster's workers inside one C++ call that holds the interpreter and
catches SIGTERM: a worker whose peer never starts would wait silently forever. So before
TensorFlow starts its server, each worker listens on its own TF_CONFIG port and dials every
other worker's until all answer (a peer answers through this listener or, once past it, through
TensorFlow's server on the same port), printing which workers it still waits for. TensorFlow's
own registration is bounded by the same timeout, and SIGTERM gets a Python handler back once
the strategy exists.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable

from errors import UserError

_JOBS = ("chief", "worker")
_PROBE_SECONDS = 0.5
_REPORT_EVERY = 30.0


@dataclass(frozen=True)
class Cluster:
    """TF_CONFIG's cluster and this process's place in it.

    Attributes:
        jobs: job name -> "host:port" addresses, in task-index order.
        task_type: this process's job.
        task_index: its index in that job.
    """

    jobs: dict
    task_type: str
    task_index: int

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    def peers(self) -> list[tuple[str, str]]:
        """(label, address) of every other task, e.g. ("worker 1", "host2:23456")."""
        return [(f"{job} {i}", address) for job, addresses in self.jobs.items()
                for i, address in enumerate(addresses)
                if (job, i) != (self.task_type, self.task_index)]


def _port(address: str) -> int | None:
    host, _, port = address.rpartition(":")
    return int(port) if host and port.isdigit() and 0 < int(port) < 65536 else None


def read_tf_config(value: str | None) -> Cluster:
    """Parse and check the TF_CONFIG environment variable of a multi-worker run.

    Args:
        value: os.environ.get("TF_CONFIG").

    Returns:
        the Cluster.

    Raises:
        UserError: one line naming TF_CONFIG, the key at fault and what it must hold.
    """
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:23456", "host2:23456"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not value:
        raise UserError(f"--distribute multi_worker reads the cluster from TF_CONFIG, which is not "
                        f"set; set it on every machine, e.g. {example} (docs/performance.md).")
    try:
        config = json.loads(value)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e}); e.g. {example}.") from e
    if not isinstance(config, dict):
        raise UserError(f"TF_CONFIG must be a JSON object with keys 'cluster' and 'task'; e.g. "
                        f"{example}.")
    jobs = config.get("cluster")
    if not isinstance(jobs, dict) or not jobs:
        raise UserError("TF_CONFIG key 'cluster' must map job names to lists of 'host:port' "
                        "addresses, e.g. {\"worker\": [\"host1:23456\", \"host2:23456\"]}. "
                        f"Received: {jobs!r}")
    for job, addresses in jobs.items():
        if job not in _JOBS:
            raise UserError(f"TF_CONFIG key 'cluster.{job}': multi_worker runs jobs "
                            f"{' and '.join(_JOBS)} only; rename or drop it.")
        if not isinstance(addresses, list) or not addresses:
            raise UserError(f"TF_CONFIG key 'cluster.{job}' must be a non-empty list of "
                            f"'host:port' strings. Received: {addresses!r}")
        for i, address in enumerate(addresses):
            if not isinstance(address, str) or _port(address) is None:
                raise UserError(f"TF_CONFIG key 'cluster.{job}[{i}]' must be 'host:port' with a "
                                f"port in 1..65535. Received: {address!r}")
    task = config.get("task")
    if not isinstance(task, dict):
        raise UserError(f"TF_CONFIG key 'task' must be an object {{\"type\": ..., \"index\": "
                        f"...}} naming this machine. Received: {task!r}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in jobs:
        raise UserError(f"TF_CONFIG key 'task.type' must name a job of 'cluster' "
                        f"({', '.join(sorted(jobs))}). Received: {task_type!r}")
    if not isinstance(index, int) or isinstance(index, bool) or \
            not 0 <= index < len(jobs[task_type]):
        raise UserError(f"TF_CONFIG key 'task.index' must be an integer in "
                        f"[0, {len(jobs[task_type]) - 1}] (cluster.{task_type} lists "
                        f"{len(jobs[task_type])}). Received: {index!r}")
    return Cluster(jobs={job: list(addresses) for job, addresses in jobs.items()},
                   task_type=task_type, task_index=index)


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) while the run waits or works: ends it with one line."""


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def stop_on_sigterm(handler=_interrupt):
    """SIGTERM raises `Interrupted` in the main thread (TensorFlow's handler otherwise eats it).

    Outside the main thread (a caller that runs the command line in a thread) nothing changes.

    Args:
        handler: the handler to install (the previous one, to put it back).

    Returns:
        the handler it replaced (None outside the main thread).
    """
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def wait_for_workers(cluster: Cluster, timeout: float,
                     log: Callable[[str], None] = print) -> None:
    """Wait until every other task of the cluster answers on its port.

    Args:
        cluster: TF_CONFIG's cluster.
        timeout: seconds to wait (--worker_start_timeout).
        log: prints the waiting lines.

    Raises:
        UserError: a worker did not start in time (named with its address).
        Interrupted: SIGTERM (with `stop_on_sigterm`) or Ctrl-C during the wait.
    """
    listener = socket.socket(socket.AF_INET6 if ":" in cluster.address.rpartition(":")[0]
                             else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:  # never accepted: a peer's connect completes in the backlog
            listener.bind(("", _port(cluster.address)))
            listener.listen(16)
        except OSError as e:
            raise UserError(f"TF_CONFIG key 'cluster.{cluster.task_type}[{cluster.task_index}]' "
                            f"= {cluster.address!r}: this machine cannot listen on that port "
                            f"({e.strerror}); free it or choose another port.") from e
        deadline, next_report = time.monotonic() + timeout, 0.0
        missing = cluster.peers()
        while True:
            missing = [(label, address) for label, address in missing if not _answers(address)]
            if not missing:
                return
            now = time.monotonic()
            names = ", ".join(f"{label} ({address})" for label, address in missing)
            if now >= deadline:
                raise UserError(f"{names} of TF_CONFIG did not start within "
                                f"--worker_start_timeout {timeout:g} s; start the same command "
                                f"there (with its own TF_CONFIG task.index) or raise the timeout.")
            if now >= next_report:
                log(f"Waiting for {names} of TF_CONFIG to start (up to {deadline - now:.0f} s "
                    f"more, --worker_start_timeout; Ctrl-C or SIGTERM stops)")
                next_report = now + _REPORT_EVERY
            time.sleep(_PROBE_SECONDS)
    finally:
        listener.close()


def tf_config_cluster() -> Cluster:
    """TF_CONFIG of this process, checked (read_tf_config)."""
    return read_tf_config(os.environ.get("TF_CONFIG"))
