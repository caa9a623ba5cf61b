"""The ML backend against a real Label Studio 1.23 (its own .ls-venv/, SQLite, 127.0.0.1): a
project of 8 photos, the backend connected, 3 annotations saved through Label Studio's API, the
other 5 pre-labelled through its "Retrieve Predictions" action; the pre-labels Label Studio
stored decode to the masks `Segmenter.predict` gives after fitting the same 3 examples here.

Skips, saying why, only where Label Studio is not installed (.ci/run installs it) or does not
start."""
import glob
import os

import numpy as np
import pytest
from PIL import Image

from data.label_studio_format import brush_mask, brush_result
from data.masks import binarize_mask
from segmenter.images import read_rgb
from segmenter import from_checkpoint
from serve.label_studio import launch
from tests.fixtures import label_studio, real_data
from tests.fixtures.meta_fixtures import red_squares
from tests.fixtures.ports import free_ports
from tests.segmenter.test_segmenter_api import run  # noqa: F401

OVERRIDES = {"steps": 100, "learning_rate": 0.5}  # the 32 px fixture init draws real masks
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="object" background="red"/></BrushLabels></View>')


def photos(folder) -> tuple[list[str], list[np.ndarray]]:
    """8 photos of one class (the real ones when present, else drawn) and their masks."""
    if real_data.missing_reason() is None:
        paths = sorted(glob.glob(os.path.join(real_data.real_fewshot_dir(), "davis_camel",
                                              "*.jpg")),
                       key=lambda p: int(os.path.splitext(os.path.basename(p))[0]))[:8]
        masks = []
        for path in paths:
            with Image.open(os.path.splitext(path)[0] + ".png") as im:
                masks.append(binarize_mask(im))
        return paths, masks
    images, masks = red_squares([(64, 48)] * 8, seed=2)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(folder, f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths, [m > 0 for m in masks]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    reason = label_studio.missing_reason()
    if reason:
        pytest.skip(reason)
    port, = free_ports()
    try:
        studio = label_studio.start(str(tmp_path_factory.mktemp("label_studio")), port)
    except RuntimeError as e:
        pytest.skip(f"Label Studio {label_studio.VERSION} did not start: {e}")
    yield studio
    studio.stop()


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def test_label_studio_pre_labels_come_from_metaseg(studio, run, tmp_path,  # noqa: F811
                                                   monkeypatch):
    paths, masks = photos(str(tmp_path))
    project = studio.create_project("metaseg e2e", CONFIG)
    tasks = studio.import_images(project, paths)
    assert len(tasks) == 8
    monkeypatch.setenv("LABEL_STUDIO_URL", studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", studio.personal_token)
    server = launch(from_checkpoint(run, **OVERRIDES), "127.0.0.1", free_ports()[0], block=False)
    try:
        backend = studio.connect_backend(
            project, f"http://{server.config.host}:{server.config.port}")
        assert studio.call("GET", f"/api/ml/{backend}")["readable_state"] == "Connected"
        for task, mask in zip(tasks[:3], masks[:3]):  # each save reaches /webhook: a fit
            studio.annotate(task["id"], [brush_result(mask, "object", from_name="tag",
                                                      to_name="image")])
        queries = tasks[3:]
        answer = studio.retrieve_predictions(project, [t["id"] for t in queries])
        assert answer["processed_items"] == 5, answer
        stored = [studio.predictions(task["id"]) for task in queries]
        state = server.config.app.state.projects.state(project)
    finally:
        server.should_exit = True
    assert state.error is None and state.examples == 3, state
    images = [read_rgb(path) for path in paths]
    reference = from_checkpoint(run, **OVERRIDES)
    reference.fit(images[:3], masks[:3])
    want = [m > 0 for m in reference.predict(images[3:])]
    assert any(w.any() for w in want) and not all(w.all() for w in want)  # a real comparison
    for task, predictions, image, expected in zip(queries, stored, images[3:], want):
        assert len(predictions) == 1, predictions
        [prediction] = predictions
        assert prediction["model_version"] == state.model_version
        assert prediction["model_version"].startswith("metaseg-3ex-")
        regions = prediction["result"]
        got = brush_mask(regions[0]) > 0 if regions else np.zeros(image.shape[:2], bool)
        assert got.shape == image.shape[:2]
        assert iou(got, expected) >= 0.99, (task["id"], iou(got, expected))
