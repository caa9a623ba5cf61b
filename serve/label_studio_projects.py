"""One Segmenter serving many Label Studio projects: each project's adapted weights, one fit at a
time, predictions with the project's newest weights.

The model is compiled once. A fit adapts it (always from the init) to every annotated task of
one project, then keeps a copy of all its variables as numpy arrays; a prediction for a project
puts that project's copy back first (unless the model holds it already). Fits run one at a time
on one worker thread: requests for a project coalesce (saving three annotations quickly runs at
most two fits, the last of them on all three). A prediction waits for the fits requested for its
project before it was asked (at most PREDICT_WAIT_S), so a pre-label always reflects every saved
annotation; a failed fit keeps the project's previous weights and records why.

Locks: `_model` guards the model's variables (one fit or one prediction at a time); `_states`
guards the project records and the queue. Whoever needs both takes `_model` first.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
import time
from typing import Callable

from absl import logging
import numpy as np

from errors import TrainingError, UserError
from data.label_studio_format import label_studio_tasks
from segmenter.api import Segmenter
from serve.label_studio_client import LabelConfig, LabelStudioClient

PREDICT_WAIT_S = 80.0  # below Label Studio's 100 s predict timeout (ML_TIMEOUT_PREDICT)
NO_FIT = "metaseg-no-examples"  # the version of the (empty) pre-labels before any fit


@dataclasses.dataclass
class ProjectState:
    """What the backend knows of one project.

    Args:
        config: its labelling config (from /setup, a webhook or a predict request).
        weights: the adapted model's variables after its last successful fit.
        model_version: names those weights (NO_FIT before any fit).
        examples: the number of examples of that fit.
        requested: fit requests so far; settled: how many a finished fit has answered.
        fitting: a fit of this project is running.
        error: why its last fit failed (None after a successful one).
    """

    config: LabelConfig | None = None
    weights: list | None = None
    model_version: str = NO_FIT
    examples: int = 0
    requested: int = 0
    settled: int = 0
    fitting: bool = False
    error: str | None = None

    def summary(self) -> dict:
        """The state as JSON for /health."""
        return {"model_version": self.model_version, "examples": self.examples,
                "fitting": self.fitting, "pending_fits": self.requested - self.settled,
                "last_error": self.error}


def examples_version(seg: Segmenter, tasks) -> str:
    """A model version that names the init, its settings and the examples: a fit is a function
    of these (Segmenter.fit always starts from the init, with a fixed seed), so the same version
    after a restart means the same weights, and Label Studio need not ask again.

    Args:
        seg: the segmenter.
        tasks: the LabelledTasks of the fit.

    Returns:
        "metaseg-<examples>ex-<8 hex digits>".
    """
    digest = hashlib.sha256(seg.describe().encode())
    for task in tasks:
        digest.update(json.dumps([task.task_id, task.image, task.regions], sort_keys=True,
                                 default=str).encode())
    return f"metaseg-{len(tasks)}ex-{digest.hexdigest()[:8]}"


class Projects:
    """Every project's state, the fit worker, and predictions.

    Args:
        seg: the loaded init (compiled once, shared by all projects).
        client: returns the client to reach Label Studio (called for each fit).
    """

    def __init__(self, seg: Segmenter, client: Callable[[], LabelStudioClient]):
        self.seg = seg
        self._client = client
        self._model = threading.Lock()
        self._states = threading.Condition()
        self._projects: dict[int, ProjectState] = {}
        self._queue: collections.deque[int] = collections.deque()
        self._in_model: int | None = None  # whose weights the model holds
        threading.Thread(target=self._work, name="metaseg-fits", daemon=True).start()

    def state(self, project_id: int) -> ProjectState:
        """A copy of a project's state (a new project has an empty one)."""
        with self._states:
            return dataclasses.replace(self._projects.setdefault(project_id, ProjectState()))

    def summary(self) -> dict:
        """Every project's state as JSON, by project id."""
        with self._states:
            return {str(pid): state.summary() for pid, state in self._projects.items()}

    def set_config(self, project_id: int, config: LabelConfig) -> None:
        """Record a project's labelling config (the newest one Label Studio sent)."""
        with self._states:
            self._projects.setdefault(project_id, ProjectState()).config = config

    def request_fit(self, project_id: int) -> int:
        """Ask for a fit of a project on all its annotated tasks (run by the worker, in turn).

        Returns:
            the request's number: `wait(project_id, number)` waits for a fit that covers it.
        """
        with self._states:
            state = self._projects.setdefault(project_id, ProjectState())
            state.requested += 1
            if project_id not in self._queue:
                self._queue.append(project_id)
            self._states.notify_all()
            return state.requested

    def wait(self, project_id: int, number: int, timeout: float) -> bool:
        """Wait until a fit that started after request `number` has ended.

        Returns:
            False when `timeout` seconds passed first.
        """
        with self._states:
            return self._states.wait_for(
                lambda: self._projects[project_id].settled >= number, timeout=timeout)

    def wait_for_pending(self, project_id: int, timeout: float = PREDICT_WAIT_S) -> ProjectState:
        """Wait for the fits already requested for a project, then return its state.

        A prediction asked for during a fit is answered after it, with its weights; after
        `timeout` seconds it is answered with the previous weights (and a log line says so).
        """
        number = self.state(project_id).requested
        if not self.wait(project_id, number, timeout):
            logging.warning(f"Project {project_id}: a fit is still running after {timeout:.0f} s; "
                            f"predicting with the previous weights.")
        return self.state(project_id)

    def predict(self, project_id: int, images: list) -> tuple[list, str]:
        """Foreground probabilities of images with a project's newest weights.

        Args:
            project_id: the project.
            images: uint8 RGB arrays, any size.

        Returns:
            (float32 probabilities per image at its own size, the weights' model version).

        Raises:
            UserError: the project has no fitted weights yet.
        """
        with self._model:
            with self._states:
                state = self._projects.get(project_id) or ProjectState()
                weights, version = state.weights, state.model_version
            if weights is None:
                raise UserError(f"Project {project_id} has no fitted weights yet; annotate a "
                                f"task first.")
            if self._in_model != project_id:
                for variable, value in zip(self.seg.model.variables, weights):
                    variable.assign(value)
                self._in_model = project_id
            return self.seg.predict(images, probabilities=True, progress=False), version

    def _work(self) -> None:
        """The fit worker: one fit at a time, projects in the order they asked."""
        while True:
            with self._states:
                self._states.wait_for(lambda: bool(self._queue))
                project_id = self._queue.popleft()
                state = self._projects[project_id]
                number, config, state.fitting = state.requested, state.config, True
            try:
                done = self._fit(project_id, config)
                error = None
            except Exception as e:  # noqa: BLE001 (any failure keeps the previous weights)
                done, error = None, str(e) or type(e).__name__
                if isinstance(e, UserError):
                    logging.error(f"Project {project_id}: fit failed, keeping the previous "
                                  f"weights: {error}")
                else:
                    logging.exception(f"Project {project_id}: fit failed, keeping the "
                                      f"previous weights")
            with self._states:
                if done is not None:
                    state.weights, state.model_version, state.examples = done
                state.error, state.fitting = error, False
                state.settled = max(state.settled, number)
                self._states.notify_all()

    def _fit(self, project_id: int, config: LabelConfig | None) -> tuple[list, str, int]:
        """Fetch a project's annotated tasks and images, fit, copy the adapted variables."""
        if config is None:
            raise UserError(f"Project {project_id}: its labelling config is unknown; connect "
                            f"the backend to the project (Settings > Model) again.")
        client = self._client()
        start = time.perf_counter()
        tasks = label_studio_tasks(client.annotated_tasks(project_id), label=config.label,
                                   data_key=config.data_key, where=f"project {project_id}")
        tasks.sort(key=lambda task: task.task_id or 0)  # the same examples in the same order
        if not tasks:
            raise UserError(f"Project {project_id} has no annotated task; paint the "
                            f"{config.label!r} on at least one image and submit it.")
        images = [client.image(task.image, task.where) for task in tasks]
        masks = [task.mask(*image.shape[:2]) for task, image in zip(tasks, images)]
        version = examples_version(self.seg, tasks)
        logging.info(f"Project {project_id}: fitting on {len(tasks)} annotated tasks "
                     f"({', '.join(str(t.task_id) for t in tasks)})")
        with self._model:
            self._in_model = None  # a failure part-way leaves no one's weights
            try:
                self.seg.fit(images, masks)
            except TrainingError:
                self.seg.reset()  # a diverged fit is dropped; other projects keep predicting
                raise
            weights = [np.array(v.numpy()) for v in self.seg.model.variables]
            self._in_model = project_id
        logging.info(f"Project {project_id}: fitted {version} in "
                     f"{time.perf_counter() - start:.1f} s")
        return weights, version, len(tasks)
