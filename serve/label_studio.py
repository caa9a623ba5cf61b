"""A Label Studio ML backend: Label Studio calls it each time a person saves an annotation; it
adapts the init to the project's annotated tasks and pre-labels the rest with brush masks.

Built on FastAPI and uvicorn (Gradio brings both) rather than the published SDK: label-studio-ml
on PyPI (1.0.9, January 2023) pins Flask 1.1.2, Jinja2 3.0.3 and Werkzeug 2.0.2, which Gradio's
stack outgrew, and answers GET /versions only as POST; the protocol is six small JSON endpoints.

What Label Studio 1.23 sends (label_studio/ml/api_connector.py, webhooks/):
    GET  /health                  on connecting and before every batch of predictions (1 s)
    POST /setup                   {project: "<id>.<created>", schema, hostname, access_token,
                                   extra_params}; answers {model_version} (3 s)
    POST /webhook                 {action, project: {id, label_config, ...}, annotation, task}
                                  for every event of the project (1 s); ANNOTATION_CREATED /
                                  _UPDATED / ANNOTATIONS_DELETED queue a fit; START_TRAINING
                                  (Settings > Model > Start Training) fits and answers with
                                  the outcome (100 s)
    POST /predict                 {tasks, project, label_config, params}; answers {results:
                                  [{result, score, model_version}]}, one per task (100 s)
    GET  /versions                the model versions, for the Model settings page
    POST /train                   the older training call (a feature flag away): as
                                  START_TRAINING

Predictions asked for during a fit are answered after it, with its weights (see
serve.label_studio_projects); before a project's first fit they are empty. The score of a
pre-label is the model's mean certainty over the image, mean(max(p, 1 - p)).
"""
from __future__ import annotations

import threading
import time

from absl import logging
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
import numpy as np
import uvicorn

from errors import UserError
from data.label_studio_format import brush_result
from segmenter.api import Segmenter
from serve.label_studio_client import (LabelConfig, LabelStudioClient, address,
                                       parse_label_config)
from serve.label_studio_projects import Projects

FIT_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
              "ANNOTATIONS_DELETED")
TRAIN_WAIT_S = 90.0  # START_TRAINING answers with the outcome within Label Studio's 100 s


def project_id(value, what: str = "project") -> int:
    """A project's id from what Label Studio sends: 3, "3", "3.1718000000" or {"id": 3}.

    Raises:
        UserError: none of these.
    """
    raw = value.get("id") if isinstance(value, dict) else value
    try:
        return int(str(raw).split(".", 1)[0])
    except ValueError:
        raise UserError(f"{what} must be a Label Studio project id (e.g. 3 or \"3.1718000000\"); "
                        f"received {raw!r}.") from None


class Connection:
    """Where Label Studio is: its variables, else the newest /setup's hostname and token."""

    def __init__(self):
        self._lock = threading.Lock()
        self._setup = (None, None)
        self._client = None

    def remember(self, hostname: str | None, access_token: str | None) -> None:
        """Keep /setup's values (used when LABEL_STUDIO_URL / _API_KEY are not set)."""
        if hostname and access_token:
            with self._lock:
                self._setup = (hostname, access_token)

    def client(self) -> LabelStudioClient:
        """The client for the current address and key (made again only when they change)."""
        with self._lock:
            url, key = address(*self._setup)
            if self._client is None or (self._client.url.rstrip("/"), self._client.api_key) \
                    != (url.rstrip("/"), key):
                self._client = LabelStudioClient(url, key)
            return self._client


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "error": message}, status_code=status)


def _prediction(probability: np.ndarray, config: LabelConfig, version: str) -> dict:
    """One task's pre-label: a brush region of the mask (none when it is empty), and a score."""
    mask = (probability >= 0.5).astype(np.uint8)  # Segmenter.predict's threshold
    score = float(np.mean(np.maximum(probability, 1.0 - probability)))
    result = [brush_result(mask, config.label, from_name=config.from_name,
                           to_name=config.to_name)] if mask.any() else []
    return {"result": result, "score": round(score, 4), "model_version": version}


def build_app(seg: Segmenter) -> FastAPI:
    """The backend's web app for one loaded init.

    Args:
        seg: the init (call `seg.warm_up()` first so the first fit does not compile).

    Returns:
        the FastAPI app; serve it with uvicorn (`launch`).
    """
    connection = Connection()
    projects = Projects(seg, connection.client)
    app = FastAPI(title="metaseg Label Studio ML backend")
    app.state.projects = projects

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        logging.warning(f"{request.url.path}: {e}")
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg')}"
                             for p in e.errors())
        return _error(400, f"{request.url.path} needs a JSON object body ({problems}).")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        logging.exception(f"{request.url.path} failed")
        return _error(500, f"{type(e).__name__}: {e}")

    def config_of(pid: int, label_config) -> LabelConfig:
        """The project's config: the one sent with this request, else the recorded one."""
        if label_config:
            projects.set_config(pid, parse_label_config(label_config))
        config = projects.state(pid).config
        if config is None:
            raise UserError(f"Project {pid}: no labelling config was sent; connect the backend "
                            f"to the project (Settings > Model).")
        return config

    @app.get("/")
    @app.get("/health")
    def health():
        return {"status": "UP", "model_class": "metaseg", "projects": projects.summary()}

    @app.post("/setup")
    def setup(payload: dict = Body(...)):
        pid = project_id(payload.get("project"))
        config_of(pid, payload.get("schema") or payload.get("label_config"))
        connection.remember(payload.get("hostname"), payload.get("access_token"))
        return {"model_version": projects.state(pid).model_version}

    @app.post("/webhook")
    def webhook(payload: dict = Body(...)):
        action = payload.get("action")
        if action not in FIT_EVENTS + ("START_TRAINING",):
            return {"status": "ignored", "action": action}
        pid = project_id(payload.get("project"), "the webhook's project")
        project = payload["project"] if isinstance(payload.get("project"), dict) else {}
        config_of(pid, project.get("label_config"))
        if action == "START_TRAINING":
            return train_now(pid)
        projects.request_fit(pid)
        return JSONResponse({"status": "queued", "project": pid}, status_code=202)

    @app.post("/train")
    def train(payload: dict = Body(...)):
        pid = project_id(payload.get("project"))
        config_of(pid, payload.get("label_config"))
        return train_now(pid)

    def train_now(pid: int):
        """Fit now (after the fits already queued) and answer with the outcome."""
        if not projects.wait(pid, projects.request_fit(pid), TRAIN_WAIT_S):
            return JSONResponse({"status": "fitting", "project": pid}, status_code=202)
        state = projects.state(pid)
        if state.error:
            return JSONResponse({"status": "error", "error": state.error,
                                 "model_version": state.model_version}, status_code=422)
        return JSONResponse({"status": "ok", "model_version": state.model_version,
                             "examples": state.examples}, status_code=201)

    @app.get("/versions")
    async def versions(request: Request):
        try:  # Label Studio sends {"project": "<id>.<created>"} as a GET body
            pid = project_id((await request.json()).get("project"))
        except (ValueError, AttributeError, UserError):
            return {"versions": sorted({s["model_version"]
                                        for s in projects.summary().values()})}
        return {"versions": [projects.state(pid).model_version]}

    @app.post("/predict")
    def predict(payload: dict = Body(...)):
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(
                isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
            raise UserError("/predict needs 'tasks': a non-empty list of tasks, each with its "
                            "'data'.")
        pid = project_id(payload.get("project") or tasks[0].get("project"))
        config = config_of(pid, payload.get("label_config"))
        refs = []
        for task in tasks:
            if not isinstance(task["data"].get(config.data_key), str):
                raise UserError(f"Task {task.get('id')}: its data has no {config.data_key!r} "
                                f"image (the labelling config's <Image value=\"$...\">).")
            refs.append(task["data"][config.data_key])
        state = projects.wait_for_pending(pid)
        if state.weights is None:
            return {"results": [{"result": [], "score": 0.0, "model_version": state.model_version}
                                for _ in tasks], "model_version": state.model_version}
        client = connection.client()
        start = time.perf_counter()
        images = [client.image(ref, f"task {task.get('id')}") for ref, task in zip(refs, tasks)]
        probabilities, version = projects.predict(pid, images)
        logging.info(f"Project {pid}: pre-labelled {len(tasks)} tasks with {version} in "
                     f"{time.perf_counter() - start:.1f} s")
        return {"results": [_prediction(p, config, version) for p in probabilities],
                "model_version": version}

    return app


def launch(seg: Segmenter, host: str = "127.0.0.1", port: int = 9090, *, block: bool = True):
    """Serve the backend for `seg` on host:port (connect it in Label Studio: Settings > Model).

    Args:
        seg: the loaded init; it is compiled here, before the first request.
        host: address to bind (127.0.0.1 unless Label Studio runs on another machine).
        port: port to bind.
        block: serve until interrupted; False serves on a daemon thread (for tests).

    Returns:
        the uvicorn.Server (`server.config.app.state.projects`: the projects' states).
    """
    seg.warm_up()
    app = build_app(seg)
    # log_config=None: uvicorn's lines go through Python logging, as absl's do, instead of
    # handlers of its own on the stderr it found at start-up.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None))
    logging.info(f"Label Studio ML backend for {seg.describe().splitlines()[0]} on "
                 f"http://{host}:{port}")
    if block:
        server.run()
        return server
    threading.Thread(target=server.run, name="label-studio-backend", daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"The backend did not start on {host}:{port} within 30 s.")
        time.sleep(0.05)
    return server
