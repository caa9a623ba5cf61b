"""Demo dataset: seeded, FSS layout, one class = shape x texture x colour, masks = that object."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import demo


def folder_bytes(root):
    return {os.path.join(d, f): open(os.path.join(root, d, f), "rb").read()
            for d in sorted(os.listdir(root)) if not d.startswith(".")
            for f in sorted(os.listdir(os.path.join(root, d)))}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "fss"
    summary = demo.make_demo_dataset(str(out), num_classes=6, images_per_class=3, image_size=48,
                                     seed=1)
    return out, summary


def test_layout_and_summary(small_demo):
    out, summary = small_demo
    classes = sorted(d for d in os.listdir(out) if not d.startswith("."))
    assert len(classes) == 6 and classes == sorted(summary["classes"])
    marker = json.loads((out / demo.MARKER).read_text())
    assert marker["classes"] == summary["classes"]
    for name in classes:
        assert sorted(os.listdir(out / name)) == ["1.jpg", "1.png", "2.jpg", "2.png", "3.jpg", "3.png"]
        shape, texture, colour = summary["classes"][name]
        assert name.endswith(f"_{colour}_{texture}_{shape}")
        mask = np.asarray(Image.open(out / name / "1.png"))
        image = Image.open(out / name / "1.jpg")
        assert image.size == (48, 48) and image.mode == "RGB" and set(np.unique(mask)) == {0, 255}
    assert len({tuple(v) for v in summary["classes"].values()}) == 6  # distinct classes


def test_seeded_and_extendable(small_demo, tmp_path):
    out, _ = small_demo
    again = demo.make_demo_dataset(str(tmp_path / "again"), num_classes=6, images_per_class=3,
                                   image_size=48, seed=1)
    assert folder_bytes(out) == folder_bytes(again["out_dir"])
    other = demo.make_demo_dataset(str(tmp_path / "other"), num_classes=6, images_per_class=3,
                                   image_size=48, seed=2)
    assert folder_bytes(other["out_dir"]) != folder_bytes(out)
    smaller = demo.make_demo_dataset(str(tmp_path / "smaller"), num_classes=2, images_per_class=3,
                                     image_size=48, seed=1)
    small_files = folder_bytes(smaller["out_dir"])
    assert small_files and all(folder_bytes(out)[k] == v for k, v in small_files.items())


def test_mask_is_the_visible_class_object():
    rng = np.random.default_rng(0)
    palette = {k: np.asarray(v, float) / np.linalg.norm(v) for k, v in demo.COLOURS.items()}
    for attributes in demo.class_attributes(40, seed=0).values():
        image, mask = demo.render_pair(rng, attributes, 64)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        # Big enough to learn at 64 px, but never the whole picture.
        assert 0.02 < mask.mean() < 0.4
        # The masked pixels carry the class colour (texture only darkens it).
        mean = image[mask == 1].astype(float).mean(axis=0)
        nearest = max(palette, key=lambda k: mean @ palette[k] / np.linalg.norm(mean))
        assert nearest == attributes[2], (attributes, mean)
        assert (mask == 0).any() and image[mask == 0].std() > 5  # background + distractors


def test_distractors_differ_in_two_attributes():
    rng = np.random.default_rng(0)
    target = ("disc", "solid", "red")
    for _ in range(200):
        other = demo._distractor(rng, target)
        assert sum(a == b for a, b in zip(other, target)) <= 1


def test_refuses_foreign_folder_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a demo dataset"):
        demo.make_demo_dataset(str(foreign), num_classes=2, images_per_class=2, image_size=32)
    assert (foreign / "thesis.tex").read_text() == "precious"
    out = tmp_path / "demo"
    assert demo.main(["--out_dir", str(out), "--num_classes", "3", "--images_per_class", "2",
                      "--image_size", "32"]) == 0
    assert demo.main(["--out_dir", str(out), "--num_classes", "2", "--images_per_class", "2",
                      "--image_size", "32"]) == 0
    assert len([d for d in os.listdir(out) if not d.startswith(".")]) == 2
    assert sorted(os.listdir(tmp_path)) == ["demo", "mine"]
    assert demo.main(["--out_dir", str(out), "--num_classes", "0"]) == 2
