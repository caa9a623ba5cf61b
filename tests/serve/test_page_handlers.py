"""The page's handlers in-process: examples from paint or an uploaded mask, every bad input a
message, segmenting into the session's own folder (masks at each image's size, weights that
reload), corrections, two sessions apart, one Segment at a time."""
import json
import os
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from errors import UserError
from segmenter import from_checkpoint
from serve import session as handlers, uploads
from serve.session import Session
from tests.segmenter.test_segmenter_api import examples, run  # noqa: F401


@pytest.fixture(scope="module")
def seg(run):  # noqa: F811
    return from_checkpoint(run, steps=3)


def _layer(mask):
    """An editor paint layer: red strokes where the mask is, transparent elsewhere."""
    layer = np.zeros(mask.shape + (4,), np.uint8)
    layer[mask > 0] = (255, 0, 0, 255)
    return layer


def _files(folder, sizes, seed=1):
    images, _ = examples(sizes, seed=seed)
    paths = []
    for i, image in enumerate(images):
        path = os.path.join(folder, f"photo {i}.jpg")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def test_examples_from_paint_or_an_uploaded_mask(tmp_path):
    state = Session(str(tmp_path / "out"), "abc")
    images, masks = examples([(50, 40), (37, 61)])
    # Strokes on an RGBA background; the eraser leaves transparent pixels.
    background = np.dstack([images[0], np.full(images[0].shape[:2], 255, np.uint8)])
    assert "Example 1 added" in handlers.add_example(state, background, [_layer(masks[0])])
    np.testing.assert_array_equal(state.examples[0].mask, masks[0] > 0)
    assert state.examples[0].image.shape == (40, 50, 3)
    handlers.add_example(state, images[1], None, Image.fromarray(masks[1]))
    np.testing.assert_array_equal(state.examples[1].mask, masks[1] > 0)
    # A layer the editor scaled is brought back to the image's size.
    small = _layer(np.asarray(Image.fromarray(masks[0]).resize((25, 20), Image.NEAREST)))
    handlers.add_example(state, images[0], [small])
    assert state.examples[2].mask.shape == (40, 50)
    assert _tree(str(tmp_path / "out")) == [f"abc/examples/{n}{s}.png" for n in (1, 2, 3)
                                            for s in ("", "_mask")]
    assert "Example 2 removed; 2 left" in handlers.remove_example(state, 1)


def test_every_bad_example_is_a_message(tmp_path, monkeypatch):
    state = Session(str(tmp_path / "out"), "../../escape")
    assert state.session_id != "../../escape" and state.folder.startswith(str(tmp_path / "out"))
    images, masks = examples([(50, 40)])
    cases = [((None, None), "Upload an example image first"),
             ((images[0], [np.zeros((40, 50, 4), np.uint8)]), "Nothing is painted"),
             ((images[0], None), "Nothing is painted"),
             ((images[0], [np.full((40, 50, 4), 255, np.uint8)]), "covers the whole image"),
             ((images[0], None, np.zeros((10, 10), np.uint8)), "uploaded mask.*same size")]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            handlers.add_example(state, *args)
    monkeypatch.setattr(uploads, "MAX_PIXELS", 1000)
    with pytest.raises(UserError, match="over the page's limit"):
        handlers.add_example(state, images[0], [_layer(masks[0])])
    monkeypatch.undo()
    for _ in range(handlers.MAX_EXAMPLES):
        handlers.add_example(state, images[0], [_layer(masks[0])])
    with pytest.raises(UserError, match="10 examples at most"):
        handlers.add_example(state, images[0], [_layer(masks[0])])
    with pytest.raises(UserError, match="Pick an example"):
        handlers.remove_example(state, 99)


def test_images_that_are_not_images_are_named(tmp_path):
    state = Session(str(tmp_path / "out"), "s1")
    paths = _files(str(tmp_path), [(30, 20), (20, 30)])
    (tmp_path / "notes.jpg").write_text("not a picture")
    message = handlers.add_images(state, paths + [str(tmp_path / "notes.jpg")])
    assert message.startswith("2 image(s) to segment") and "notes.jpg is not an image" in message
    assert [name for name, _ in state.queries] == ["photo_0", "photo_1"]
    handlers.add_images(state, paths[:1])  # the same name again gets its own
    assert state.queries[-1][0] == "photo_0_2"
    with pytest.raises(UserError, match="Not added: notes.jpg is not an image"):
        handlers.add_images(state, [str(tmp_path / "notes.jpg")])


def test_segment_writes_masks_and_weights_into_the_session_folder(seg, tmp_path):
    root = tmp_path / "out"
    state = Session(str(root), "session-1")
    with pytest.raises(UserError, match="Add at least one example"):
        handlers.segment(state, seg, steps=3, learning_rate=0.1)
    images, masks = examples([(50, 40), (37, 61)])
    for image, mask in zip(images, masks):
        handlers.add_example(state, image, [_layer(mask)])
    with pytest.raises(UserError, match="Add the images to segment"):
        handlers.segment(state, seg, steps=3, learning_rate=0.1)
    sizes = [(70, 45), (33, 90), (64, 64)]
    handlers.add_images(state, _files(str(tmp_path), sizes))
    with pytest.raises(UserError, match="Steps must be a whole number in 0..1000"):
        handlers.segment(state, seg, steps=-2, learning_rate=0.1)
    reports = []
    masks_zip, weights_zip = handlers.segment(
        state, seg, steps=2, learning_rate=0.05,
        on_progress=lambda fraction, text: reports.append((fraction, text)))
    assert reports[0][1].startswith("Adapting") and any("Segmenting" in t for _, t in reports)
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)
    assert seg.steps_taken == 2 and seg.settings.adapt.learning_rate == 0.05
    with zipfile.ZipFile(masks_zip) as archive:
        names = archive.namelist()
        assert names == ["photo_0_mask.png", "photo_1_mask.png", "photo_2_mask.png"]
        for name, (width, height) in zip(names, sizes):
            with archive.open(name) as f, Image.open(f) as mask:
                assert mask.size == (width, height) and set(np.unique(mask)) <= {0, 255}
    captions = [caption for _, caption in handlers.gallery(state)]
    assert captions[0] == f"photo_0: {100 * (state.results[0].mask > 0).mean():.1f}%"
    with zipfile.ZipFile(weights_zip) as archive:
        archive.extractall(tmp_path / "unzipped")
    again = from_checkpoint(str(tmp_path / "unzipped" / "weights"))
    assert again.init.kind == "fine_tuned" and again.settings.adapt.steps == 2
    np.testing.assert_array_equal(again.predict(state.queries[0][1]), state.results[0].mask)
    # Everything the session wrote is in its folder.
    assert all(path.startswith("session-1/") for path in _tree(str(root)))
    # A result goes back to the editor as a paint layer, to correct and add as an example.
    image, layer = handlers.result_layer(state, 1)
    assert image.shape == (90, 33, 3) and layer.shape == (90, 33, 4)
    np.testing.assert_array_equal(layer[..., 3] > 0, state.results[1].mask > 0)
    if (state.results[1].mask > 0).any() and not (state.results[1].mask > 0).all():
        assert "Example 3 added" in handlers.add_example(state, image, [layer])


def test_two_sessions_stay_apart_and_segment_one_at_a_time(seg, tmp_path):
    root = str(tmp_path / "out")
    sessions = [Session(root, "a"), Session(root, "b")]
    for k, state in enumerate(sessions):
        images, masks = examples([(40, 40), (48, 36)], seed=10 + k)
        for image, mask in zip(images, masks):
            handlers.add_example(state, image, [_layer(mask)])
        handlers.add_images(state, _files(str(tmp_path), [(30 + 10 * k, 30)], seed=k))
    # Alone, each session's masks; then both at once from two threads: the same masks.
    alone = []
    for state in sessions:
        handlers.segment(state, seg, steps=2, learning_rate=0.05)
        alone.append(state.results[0].mask.copy())
    threads = [threading.Thread(target=handlers.segment, args=(state, seg),
                                kwargs={"steps": 2, "learning_rate": 0.05}) for state in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for state, mask in zip(sessions, alone):
        np.testing.assert_array_equal(state.results[0].mask, mask)
    assert len(sessions[0].examples) == 2 and sessions[0].queries[0][1].shape[1] == 30
    assert sessions[1].queries[0][1].shape[1] == 40
    assert {p.split("/")[0] for p in _tree(root)} == {"a", "b"}


def test_the_masks_download_holds_every_format_chosen_each_equal_to_the_masks(seg, tmp_path):
    """The page's formats are --mask_format's: COCO decodes to the PNG masks exactly, YOLO-seg
    redraws them, Label Studio's pre-labels decode to them, each image named as uploaded."""
    from pycocotools.coco import COCO

    from data.annotations import read_yolo_polygons, yolo_mask
    from data.label_studio_format import brush_mask
    state = Session(str(tmp_path / "out"), "session-1")
    images, masks = examples([(50, 40), (37, 61)])
    for image, mask in zip(images, masks):
        handlers.add_example(state, image, [_layer(mask)])
    sizes = [(70, 45), (33, 90)]
    handlers.add_images(state, _files(str(tmp_path), sizes))
    for wrong in ([], ["png", "tiff"]):
        with pytest.raises(UserError, match="Choose one or more mask formats of png, overlay"):
            handlers.segment(state, seg, steps=2, learning_rate=0.05, formats=wrong)
    masks_zip, _ = handlers.segment(state, seg, steps=2, learning_rate=0.05,
                                    formats=["png", "overlay", "coco", "yolo", "label_studio"])
    unzipped = tmp_path / "masks"
    with zipfile.ZipFile(masks_zip) as archive:
        assert sorted(archive.namelist()) == [
            "instances.json", "label_studio.json", "labels/photo_0.txt", "labels/photo_1.txt",
            "photo_0_mask.png", "photo_0_overlay.png", "photo_1_mask.png",
            "photo_1_overlay.png"]  # no bookkeeping, no session id
        archive.extractall(unzipped)
    coco = COCO(str(unzipped / "instances.json"))
    tasks = json.loads((unzipped / "label_studio.json").read_text())
    assert [i["file_name"] for i in coco.dataset["images"]] == ["photo_0.jpg", "photo_1.jpg"]
    assert [t["data"]["image"] for t in tasks] == ["photo_0.jpg", "photo_1.jpg"]
    for k, result in enumerate(state.results):
        png = np.asarray(Image.open(unzipped / f"photo_{k}_mask.png")) > 0
        np.testing.assert_array_equal(png, result.mask > 0)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[k + 1]))
        from_coco = coco.annToMask(anns[0]) > 0 if anns else np.zeros_like(png)
        np.testing.assert_array_equal(from_coco, png)
        results = tasks[k]["predictions"][0]["result"]
        if results:
            np.testing.assert_array_equal(brush_mask(results[0]) > 0, png)
        if png.any():
            drawn = yolo_mask(read_yolo_polygons(str(unzipped / "labels" / f"photo_{k}.txt")),
                              *png.shape) > 0
            assert (drawn & png).sum() / (drawn | png).sum() >= 0.9
    # The next press with png alone holds png alone.
    masks_zip, _ = handlers.segment(state, seg, steps=2, learning_rate=0.05)
    with zipfile.ZipFile(masks_zip) as archive:
        assert archive.namelist() == ["photo_0_mask.png", "photo_1_mask.png"]


def test_the_page_builds_around_an_init(seg, tmp_path):
    from serve.app import build_page, header
    page = build_page(seg, str(tmp_path / "out"))
    assert "Segment your own object" in header(seg) and seg.init.path in header(seg)
    assert "FOMAML, 2 meta-iterations" in header(seg)
    assert {c.elem_id for c in page.blocks.values() if getattr(c, "elem_id", None)} >= {
        "editor", "images", "segment", "results", "masks-zip", "weights-zip", "status",
        "mask-formats"}
