"""The Label Studio ML backend in-process (serve/label_studio.py on a real uvicorn, reading a
stand-in Label Studio): pre-labels equal to Segmenter.fit + predict, predictions asked for
during a fit answered after it, a failed fit keeping the previous weights and saying why, two
projects apart, every bad request a JSON error while the server keeps serving, and both kinds
of Label Studio key."""
import re
import time

import httpx
import numpy as np
import pytest

from data.label_studio_format import brush_mask, brush_result
from segmenter import from_checkpoint
from serve.label_studio import launch
from serve.label_studio_projects import NO_FIT
from tests.fixtures.fake_label_studio import (ACCESS_TOKEN, LEGACY_TOKEN, PERSONAL_TOKEN,
                                              FakeLabelStudio)
from tests.fixtures.ports import free_ports
from tests.segmenter.test_segmenter_api import examples, run  # noqa: F401

OVERRIDES = {"steps": 20, "learning_rate": 0.5}  # enough to give each project its own masks
CONFIG = ('<View><Image name="img" value="$photo"/><BrushLabels name="paint" toName="img">'
          '<Label value="square"/><Label value="other"/></BrushLabels></View>')


@pytest.fixture(scope="module")
def studio():
    fake = FakeLabelStudio(free_ports()[0])
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def backend(run, studio):  # noqa: F811
    """The backend's URL and its projects' states (Label Studio's address comes from /setup)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("LABEL_STUDIO_URL", raising=False)
        env.delenv("LABEL_STUDIO_API_KEY", raising=False)
        server = launch(from_checkpoint(run, **OVERRIDES), "127.0.0.1", free_ports()[0],
                        block=False)
        url = f"http://{server.config.host}:{server.config.port}"
        with httpx.Client(base_url=url, timeout=120) as client:
            answer = client.post("/setup", json={"project": "1.1718000000", "schema": CONFIG,
                                                 "hostname": studio.url,
                                                 "access_token": PERSONAL_TOKEN})
            assert answer.status_code == 200 and answer.json() == {"model_version": NO_FIT}
            yield client, server.config.app.state.projects
        server.should_exit = True


@pytest.fixture(scope="module")
def reference(run):  # noqa: F811
    """A second Segmenter with the same init and settings: what each fit should give."""
    return from_checkpoint(run, **OVERRIDES)


def add_project(studio, project, masks_of, seed):
    """Give the stand-in a project of 3 annotated tasks and 2 to pre-label.

    Returns:
        (example images, their masks, query images, query tasks).
    """
    images, masks = examples([(40, 30), (50, 50), (33, 47), (45, 35), (30, 60)], seed)
    masks = [masks_of(m) for m in masks]
    tasks = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        task = {"id": 100 * project + i, "project": project,
                "data": {"photo": studio.add_image(project, f"{i}.png", image)}}
        if i < 3:  # newest first in the export: the backend orders the examples by task id
            task["annotations"] = [{"id": 1000 * project + i, "result": [
                brush_result(mask, "square", from_name="paint", to_name="img")]}]
        tasks.append(task)
    studio.exports[project] = [t for t in reversed(tasks) if "annotations" in t]
    return images[:3], masks[:3], images[3:], tasks[3:]


def expected_masks(reference, images, masks, queries):
    reference.fit(images, masks)
    return [m > 0 for m in reference.predict(queries)]


def predicted(answer, queries):
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(queries)
    out = []
    for result, image in zip(results, queries):
        assert result["score"] == 0 if result["model_version"] == NO_FIT else \
            0.5 <= result["score"] <= 1
        if not result["result"]:
            out.append(np.zeros(image.shape[:2], bool))
            continue
        [region] = result["result"]
        assert (region["from_name"], region["to_name"]) == ("paint", "img")
        assert region["value"]["brushlabels"] == ["square"]  # the config's first label
        out.append(brush_mask(region) > 0)
    return out, results[0]["model_version"]


def predict(client, project, tasks):
    return client.post("/predict", json={"tasks": tasks, "project": f"{project}.1718000000",
                                         "label_config": CONFIG, "params": {"context": None}})


def train(client, project):
    return client.post("/webhook", json={"action": "START_TRAINING",
                                         "project": {"id": project, "label_config": CONFIG}})


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def assert_same_masks(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape and iou(g, w) >= 0.99
    assert any(w.any() for w in want) and not all(w.all() for w in want)  # a real test


def test_before_any_fit_pre_labels_are_empty(backend, studio):
    client, _ = backend
    _, _, queries, tasks = add_project(studio, 9, lambda m: m, seed=9)
    masks, version = predicted(predict(client, 9, tasks), queries)
    assert version == NO_FIT and not any(m.any() for m in masks)
    assert client.get("/health").json()["status"] == "UP"


def test_a_fit_pre_labels_as_segmenter_fit_and_predict(backend, studio, reference):
    client, _ = backend
    images, masks, queries, tasks = add_project(studio, 1, lambda m: m, seed=0)
    answer = train(client, 1)
    assert answer.status_code == 201 and answer.json()["examples"] == 3, answer.text
    version = answer.json()["model_version"]
    assert version.startswith("metaseg-3ex-")
    got, got_version = predicted(predict(client, 1, tasks), queries)
    assert got_version == version
    assert_same_masks(got, expected_masks(reference, images, masks, queries))
    assert client.post("/setup", json={"project": "1.1718000000", "schema": CONFIG}).json() == {
        "model_version": version}  # Label Studio asks /setup which version is current
    assert client.request("GET", "/versions", json={"project": "1.1718000000"}).json() == {
        "versions": [version]}
    # A personal access token is exchanged for an access token, sent as Bearer.
    assert ("POST", "/api/token/refresh/", None) in studio.requests
    assert studio.requests[-1][2] == f"Bearer {ACCESS_TOKEN}"


def test_a_prediction_during_a_fit_is_answered_after_it(backend, studio, reference):
    client, _ = backend
    images, masks, queries, tasks = add_project(studio, 3, lambda m: m, seed=3)
    studio.export_delay_s = 2.0  # the fit spends 2 s fetching the tasks
    try:
        start = time.perf_counter()
        answer = client.post("/webhook", json={"action": "ANNOTATION_CREATED",
                                               "project": {"id": 3, "label_config": CONFIG},
                                               "annotation": {"id": 3000}, "task": {"id": 300}})
        assert answer.status_code == 202 and time.perf_counter() - start < 1.0  # LS waits 1 s
        got, version = predicted(predict(client, 3, tasks), queries)
        assert time.perf_counter() - start >= 2.0  # it waited for the fit ...
    finally:
        studio.export_delay_s = 0.0
    assert version.startswith("metaseg-3ex-")  # ... and answered with its weights
    assert_same_masks(got, expected_masks(reference, images, masks, queries))


def test_a_failed_fit_keeps_the_previous_weights_and_says_why(backend, studio, caplog):
    client, projects = backend
    _, _, queries, tasks = add_project(studio, 4, lambda m: m, seed=4)
    assert train(client, 4).status_code == 201
    before, version = predicted(predict(client, 4, tasks), queries)
    good = studio.exports[4]
    bad = [dict(t) for t in good]
    region = bad[0]["annotations"][0]["result"][0]
    region = dict(region, value=dict(region["value"], rle=region["value"]["rle"][:9]))
    bad[0]["annotations"] = [{"id": 4002, "result": [region]}]
    studio.exports[4] = bad
    answer = train(client, 4)
    assert answer.status_code == 422
    assert answer.json()["model_version"] == version
    assert re.search(r"project 4, task 402, annotation 4002, region 0: its brush RLE "
                     r"(holds|cannot be decoded)", answer.json()["error"])
    health = client.get("/health").json()["projects"]["4"]
    assert health["last_error"] == answer.json()["error"] and health["model_version"] == version
    after, after_version = predicted(predict(client, 4, tasks), queries)
    assert after_version == version
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    # The same through a webhook: a log line says why; an image Label Studio lost, too.
    del studio.images[good[1]["data"]["photo"]]
    studio.exports[4] = good
    number = projects.request_fit(4)
    assert projects.wait(4, number, 60)
    assert "404 for the image of project 4, task 401" in projects.state(4).error
    assert any("Project 4: fit failed, keeping the previous weights" in r.getMessage()
               for r in caplog.records)
    assert predicted(predict(client, 4, tasks), queries)[1] == version


def test_two_projects_keep_their_own_weights(backend, studio, reference):
    client, _ = backend
    first = add_project(studio, 5, lambda m: m, seed=5)
    second = add_project(studio, 6, lambda m: 255 - m, seed=5)  # the background is the object
    want = {5: expected_masks(reference, *first[:3]), 6: expected_masks(reference, *second[:3])}
    assert train(client, 5).status_code == 201 and train(client, 6).status_code == 201
    for project, (_, _, queries, tasks) in [(5, first), (6, second), (5, first)]:
        got, _ = predicted(predict(client, project, tasks), queries)
        assert_same_masks(got, want[project])
    assert not np.array_equal(want[5][0], want[6][0])


def test_the_environment_variables_win_over_setup(backend, studio, monkeypatch):
    client, _ = backend
    add_project(studio, 7, lambda m: m, seed=7)
    monkeypatch.setenv("LABEL_STUDIO_URL", studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY_TOKEN)
    assert train(client, 7).status_code == 201
    assert studio.requests[-1][2] == f"Token {LEGACY_TOKEN}"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
    answer = train(client, 7)
    assert answer.status_code == 422 and "set LABEL_STUDIO_API_KEY" in answer.json()["error"]


@pytest.mark.parametrize("path, body, status, message", [
    ("/predict", b"not json", 400, r"/predict needs a JSON object body"),
    ("/predict", [1, 2], 400, r"/predict needs a JSON object body"),
    ("/predict", {}, 400, r"needs 'tasks': a non-empty list"),
    ("/predict", {"tasks": [{"id": 5, "data": {"image": "a.png"}}], "project": "1.2",
                  "label_config": CONFIG}, 400, r"Task 5: its data has no 'photo' image"),
    ("/predict", {"tasks": [{"id": 5, "data": {"photo": "s3://bucket/a.png"}}], "project": 1},
     400, r"task 5: its image 's3://bucket/a.png' is neither an http\(s\) URL"),
    ("/predict", {"tasks": [{"id": 5, "data": {"photo": "/data/upload/1/gone.png"}}],
                  "project": 1}, 400, r"404 for the image of task 5"),
    ("/predict", {"tasks": [{"id": 5, "data": {}}], "project": "x"}, 400,
     r"project must be a Label Studio project id"),
    ("/predict", {"tasks": [{"id": 5, "data": {}}], "project": 77}, 400,
     r"Project 77: no labelling config was sent"),
    ("/setup", {"project": "1.2", "schema": '<View><Image name="i" value="$i"/></View>'}, 400,
     r"needs <BrushLabels"),
    ("/setup", {"project": "1.2", "schema": "<View"}, 400, r"not XML"),
    ("/setup", {"project": "1.2", "schema": '<View><BrushLabels name="b" toName="x">'
                '<Label value="a"/></BrushLabels></View>'}, 400, r"no <Image name='x'"),
    ("/webhook", {"action": "ANNOTATION_CREATED"}, 400, r"the webhook's project must be"),
    ("/webhook", {"action": "PROJECT_UPDATED"}, 200, r"ignored"),
])
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(backend, studio, path,
                                                                    body, status, message):
    client, _ = backend
    if "'photo'" in str(body):
        train(client, 1)  # a project with weights fetches the images
    answer = client.post(path, content=body) if isinstance(body, bytes) else \
        client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert re.search(message, answer.text), answer.text
    assert client.get("/health").status_code == 200


def test_the_command_line_serves_the_backend_on_the_init(run, tmp_path):  # noqa: F811
    """run_metasegnet.py --label_studio --checkpoint INIT --port P answers /health and /setup
    with the init it names, and stops on SIGTERM."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    port = free_ports()[0]
    process = subprocess.Popen(
        [sys.executable, os.path.join(root, "run_metasegnet.py"), "--label_studio",
         "--checkpoint", run, "--port", str(port), "--eval-iters", "2"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert health is not None and health.status_code == 200, process.poll()
        assert health.json()["status"] == "UP"
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=60)
    assert "--eval-iters 2 overrides the init's 3" in out
    assert f"Label Studio ML backend on http://127.0.0.1:{port}" in out
