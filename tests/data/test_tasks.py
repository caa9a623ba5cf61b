"""load_tasks: what it returns and how each broken dataset is reported."""
import json
import os

import numpy as np
import pytest

import fss_1000_image_to_tfrecord as converter
from data.tasks import ClassData, load_tasks


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from fss_fixtures import make_fss
    root = tmp_path_factory.mktemp("tasks")
    make_fss(str(root / "fss"), {"bus": 3, "cat": 2}, size=24)
    converter.convert(str(root / "fss"), str(root / "out"), image_size=24, num_shards=2, log=None)
    return root / "out"


def test_loads_sorted_uint8_classes(converted):
    tasks = load_tasks(str(converted))
    assert list(tasks) == ["bus", "cat"]
    bus = tasks["bus"]
    assert isinstance(bus, ClassData) and bus.name == "bus" and len(bus) == 3
    assert bus.images.dtype == np.uint8 and bus.images.shape == (3, 24, 24, 3)
    assert bus.masks.dtype == np.uint8 and set(np.unique(bus.masks)) == {0, 1}


def _copy(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


def test_errors_name_the_problem_and_the_fix(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*fss_1000_image_to_tfrecord.py"):
        load_tasks(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="manifest.json' is missing"):
        load_tasks(str(tmp_path))
    with pytest.raises(ValueError, match="converted at 24 px.*--image_size 32"):
        load_tasks(str(converted), image_size=32)

    missing_shard = _copy(converted, tmp_path / "missing")
    os.remove(missing_shard / "fss-00001-of-00002.tfrecord")
    with pytest.raises(FileNotFoundError, match="fss-00001-of-00002.tfrecord"):
        load_tasks(str(missing_shard))

    edited = _copy(converted, tmp_path / "edited")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["classes"]["bus"] = 4
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="disagree with manifest.json.*'bus'"):
        load_tasks(str(edited))

    manifest["format_version"] = 99
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version 99"):
        load_tasks(str(edited))

    truncated = _copy(converted, tmp_path / "truncated")
    shard = truncated / "fss-00000-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-50])
    with pytest.raises(ValueError, match="Corrupt shard"):
        load_tasks(str(truncated))


def test_class_data_checks_its_arrays():
    with pytest.raises(ValueError, match="uint8 \\(n,S,S,3\\)"):
        ClassData("bus", np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="masks must be uint8"):
        ClassData("bus", np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 7), np.uint8))


def test_class_arrays_are_read_only(converted):
    bus = load_tasks(str(converted))["bus"]
    with pytest.raises(ValueError, match="read-only"):
        bus.images[0, 0, 0, 0] = 1


def test_a_folder_of_unconverted_images_names_a_conversion_into_another_folder(converted):
    images = str(converted.parent / "fss")  # the converter's input, given as --data-dir
    with pytest.raises(FileNotFoundError) as info:
        load_tasks(images)
    message = str(info.value)
    assert "holds images (class folders of .jpg and .png), not shards" in message
    assert f"--input_dir {images} --tfrecord_dir {images}_shards" in message
    assert f"pass --data-dir {images}_shards" in message and "\n" not in message
