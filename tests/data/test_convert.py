"""fss_1000_image_to_tfrecord: round trip, mask rule, every bad input, strictness, atomic output."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fss_1000_image_to_tfrecord as converter
from data import tfrecord
from data.tasks import load_tasks
from fss_fixtures import box_mask, smooth_image, write_pair
from tests.fixtures.real_data import missing_reason, real_fewshot_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "fss_1000_image_to_tfrecord.py")


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def snapshot(folder):
    """{file name: bytes} of a folder, to compare outputs exactly."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_round_trip_multi_shard(tmp_path, make_fss):
    written = make_fss(tmp_path / "fss", {"bus": 4, "thor's_hammer": 3, "zebra": 5}, size=32)
    report = converter.convert(str(tmp_path / "fss"), str(tmp_path / "out"), image_size=32,
                               num_shards=3, log=None)
    assert report.classes == {"bus": 4, "thor's_hammer": 3, "zebra": 5} and not report.problems
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and manifest["num_pairs"] == 12
    assert [s["file"] for s in manifest["shards"]] == [tfrecord.shard_name(i, 3) for i in range(3)]
    assert sum(s["num_pairs"] for s in manifest["shards"]) == 12

    tasks = load_tasks(str(tmp_path / "out"), image_size=32)
    assert list(tasks) == ["bus", "thor's_hammer", "zebra"]
    for name, pairs in written.items():
        data = tasks[name]
        assert data.images.shape == (len(pairs), 32, 32, 3) and data.masks.dtype == np.uint8
        for i, (image, mask) in enumerate(pairs):
            np.testing.assert_array_equal(data.masks[i], mask)  # masks exact
            # Within JPEG tolerance of the drawn array (chroma subsampling at 32 px) ...
            assert np.abs(data.images[i].astype(int) - image).mean() < 6
            # ... and since same-size RGB JPEGs are stored as-is, equal to PIL's decoding.
            decoded = np.asarray(Image.open(tmp_path / "fss" / name / f"{i + 1}.jpg"))
            np.testing.assert_array_equal(data.images[i], decoded)


def test_resizes_other_sizes(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "fss" / "kite"
    images, masks = [], []
    for stem, size in (("1", 48), ("2", 20), ("10", 32)):
        image, mask = smooth_image(rng, size), box_mask(rng, size)
        write_pair(folder, stem, image, mask)
        images.append(image)
        masks.append(mask)
    converter.convert(str(tmp_path / "fss"), str(tmp_path / "out"), image_size=32, log=None)
    data = load_tasks(str(tmp_path / "out"))["kite"]
    for i in range(3):  # natural stem order 1, 2, 10
        expected = np.asarray(Image.fromarray(masks[i]).resize((32, 32), Image.NEAREST))
        np.testing.assert_array_equal(data.masks[i], expected)
        source = np.asarray(Image.open(folder / f"{['1', '2', '10'][i]}.jpg").convert("RGB")
                            .resize((32, 32), Image.BILINEAR)).astype(int)
        assert np.abs(data.images[i].astype(int) - source).mean() < 4


def test_mask_rule_covers_every_encoding(tmp_path):
    rng = np.random.default_rng(2)
    truth = box_mask(rng, 32)
    grey = np.where(truth == 1, 200, 100).astype(np.uint8)  # anti-aliased levels: 200 fg, 100 bg
    red = np.stack([truth * 255, truth * 0, truth * 0], -1).astype(np.uint8)
    alpha = np.stack([np.full_like(truth, 255)] * 3 + [truth * 255], -1).astype(np.uint8)
    opaque_white = np.stack([truth * 255] * 3 + [np.full_like(truth, 255)], -1).astype(np.uint8)
    masks = {"1": Image.fromarray(truth), "2": Image.fromarray(truth * 255),
             "3": Image.fromarray(grey), "4": Image.fromarray(red, "RGB"),
             "5": Image.fromarray(alpha, "RGBA"), "6": Image.fromarray(opaque_white, "RGBA"),
             "7": Image.fromarray(truth * 255).convert("1"),
             "8": Image.fromarray(truth * 255).convert("P")}
    folder = tmp_path / "fss" / "masks"
    folder.mkdir(parents=True)
    for stem, mask in masks.items():
        Image.fromarray(smooth_image(rng, 32)).save(folder / f"{stem}.jpg")
        mask.save(folder / f"{stem}.png")
    report = converter.convert(str(tmp_path / "fss"), str(tmp_path / "out"), image_size=32,
                               log=None)
    assert not report.problems
    data = load_tasks(str(tmp_path / "out"))["masks"]
    for i in range(len(masks)):
        np.testing.assert_array_equal(data.masks[i], truth, err_msg=f"mask {i + 1}")


def test_nested_archive_layout(tmp_path, make_fss):
    make_fss(tmp_path / "FSS-1000" / "fewshot_data", {"bus": 2, "cat": 2})
    (tmp_path / "FSS-1000" / "__MACOSX").mkdir()  # zip debris must not count as a folder
    report = converter.convert(str(tmp_path / "FSS-1000"), str(tmp_path / "out"), image_size=32,
                               log=None)
    assert report.class_root.endswith("fewshot_data") and report.classes == {"bus": 2, "cat": 2}


def _damaged_dataset(root, make_fss):
    """Good classes plus one instance of every problem; returns {path: reason fragment}."""
    make_fss(root, {"good": 4, "mixed": 7, "lonely": 2, "zero": 1}, size=32)
    mixed = os.path.join(root, "mixed")
    with open(os.path.join(mixed, "1.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")
    data = open(os.path.join(mixed, "2.jpg"), "rb").read()
    with open(os.path.join(mixed, "2.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    os.remove(os.path.join(mixed, "3.png"))
    os.remove(os.path.join(mixed, "4.jpg"))
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(os.path.join(mixed, "5.png"))
    os.remove(os.path.join(root, "lonely", "2.png"))
    os.makedirs(os.path.join(root, "empty"))
    return {os.path.join(mixed, "1.jpg"): "corrupt or unreadable image",
            os.path.join(mixed, "2.jpg"): "corrupt or unreadable image",
            os.path.join(mixed, "3.jpg"): "image without mask",
            os.path.join(mixed, "4.png"): "mask without image",
            os.path.join(mixed, "5.jpg"): "image is 32x32 but its mask",
            os.path.join(root, "lonely", "2.jpg"): "image without mask",
            os.path.join(root, "lonely"): "class has 1 good pair",
            os.path.join(root, "zero"): "class has 1 good pair",
            os.path.join(root, "empty"): "empty class folder"}


def test_every_problem_reported_once_and_the_rest_converted(tmp_path, make_fss):
    expected = _damaged_dataset(str(tmp_path / "fss"), make_fss)
    lines = []
    report = converter.convert(str(tmp_path / "fss"), str(tmp_path / "out"), image_size=32,
                               log=lines.append)
    found = {p.path: p.reason for p in report.problems}
    assert set(found) == set(expected)
    for path, fragment in expected.items():
        assert fragment in found[path], (path, found[path])
        assert any(line.startswith("problem: ") and path in line for line in lines)
    assert report.classes == {"good": 4, "mixed": 2}
    assert sorted(report.skipped_classes) == ["empty", "lonely", "zero"]
    # mixed: 5 of 7 stems bad; lonely: 2 stems; zero: 1 stem.
    assert report.skipped_pairs == 5 + 2 + 1
    assert "done: 2 classes, 6 pairs" in lines[-1]
    assert {k: len(v) for k, v in load_tasks(str(tmp_path / "out")).items()} == report.classes


def test_strict_cli_exits_2_and_writes_nothing(tmp_path, make_fss):
    expected = _damaged_dataset(str(tmp_path / "fss"), make_fss)
    out = tmp_path / "out"
    result = run_cli("--input_dir", tmp_path / "fss", "--tfrecord_dir", out, "--image_size", 32,
                     "--strict")
    assert result.returncode == 2
    assert "9 problem(s)" in result.stderr and "Traceback" not in result.stderr
    for path in expected:
        assert path in result.stdout
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["fss"]  # no temporary folder either


@pytest.mark.parametrize("case", ["missing_input", "no_classes", "unwritable", "foreign_output"])
def test_cli_input_errors_are_one_line(tmp_path, make_fss, case):
    make_fss(tmp_path / "fss", {"bus": 2})
    input_dir, out = tmp_path / "fss", tmp_path / "out"
    if case == "missing_input":
        input_dir = tmp_path / "nope"
    elif case == "no_classes":
        input_dir = tmp_path / "flat"
        input_dir.mkdir()
        (input_dir / "readme.txt").write_text("no class folders here")
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"  # parent is a file: unwritable even for root
    else:
        out.mkdir()
        (out / "precious.txt").write_text("not converter output")
    result = run_cli("--input_dir", input_dir, "--tfrecord_dir", out)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    if case == "foreign_output":
        assert (out / "precious.txt").read_text() == "not converter output"


def test_rerun_replaces_output_whole(tmp_path, make_fss):
    make_fss(tmp_path / "fss", {"bus": 3, "cat": 3})
    out = str(tmp_path / "out")
    converter.convert(str(tmp_path / "fss"), out, image_size=32, num_shards=3, log=None)
    assert len(os.listdir(out)) == 4
    make_fss(tmp_path / "fss2", {"dog": 2})
    converter.convert(str(tmp_path / "fss2"), out, image_size=32, log=None)
    assert sorted(os.listdir(out)) == ["fss-00000-of-00001.tfrecord", "manifest.json"]
    assert list(load_tasks(out)) == ["dog"]
    assert sorted(os.listdir(tmp_path)) == ["fss", "fss2", "out"]


def test_interrupted_run_leaves_previous_output_intact(tmp_path, make_fss, monkeypatch):
    make_fss(tmp_path / "fss", {"bus": 3, "cat": 3})
    out = str(tmp_path / "out")
    converter.convert(str(tmp_path / "fss"), out, image_size=32, log=None)
    before = snapshot(out)

    make_fss(tmp_path / "fss", {"bus": 3, "cat": 3, "dog": 4}, seed=5)
    calls = {"n": 0}
    real = tfrecord.serialize_pair

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-way through the shards
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tfrecord, "serialize_pair", failing)
    with pytest.raises(KeyboardInterrupt):
        converter.convert(str(tmp_path / "fss"), out, image_size=32, num_shards=2, log=None)
    assert calls["n"] == 5
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["fss", "out"]  # the partial temp folder is gone
    assert list(load_tasks(out)) == ["bus", "cat"]


def test_a_full_disk_is_one_line_naming_the_output_and_the_previous_output_is_kept(
        tmp_path, make_fss, monkeypatch, capsys):
    import tensorflow as tf
    make_fss(tmp_path / "fss", {"bus": 2, "cat": 2})
    out = str(tmp_path / "out")
    converter.convert(str(tmp_path / "fss"), out, image_size=32, log=None)
    before = snapshot(out)
    real = tf.io.TFRecordWriter
    # every shard goes to /dev/full, where each write fails with ENOSPC
    monkeypatch.setattr(tf.io, "TFRecordWriter", lambda path, *a, **k: real("/dev/full"))
    status = converter.main(["--input_dir", str(tmp_path / "fss"), "--tfrecord_dir", out,
                             "--image_size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert f"--tfrecord_dir {out!r}: writing fss-00000-of-00001.tfrecord failed (No space left " \
           f"on device); free space" in err[0]
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["fss", "out"]


def test_killed_run_debris_is_ignored_then_cleaned(tmp_path, make_fss):
    make_fss(tmp_path / "fss", {"bus": 2, "cat": 2})
    out = str(tmp_path / "out")
    converter.convert(str(tmp_path / "fss"), out, image_size=32, log=None)
    debris = tmp_path / ".out.tmp-killed"  # what a SIGKILLed run leaves behind
    debris.mkdir()
    (debris / "fss-00000-of-00001.tfrecord").write_bytes(b"half a shard")
    assert list(load_tasks(out)) == ["bus", "cat"]
    converter.convert(str(tmp_path / "fss"), out, image_size=32, log=None)
    assert not debris.exists()


def test_real_fewshot_converts_cleanly(tmp_path):
    if missing_reason():
        pytest.skip(missing_reason())
    source = real_fewshot_dir()
    report = converter.convert(source, str(tmp_path / "out"), image_size=224, log=None)
    assert not report.problems and len(report.classes) == 20 and report.num_pairs == 169
    tasks = load_tasks(str(tmp_path / "out"), image_size=224)
    dog = tasks["davis_dog"]
    assert dog.images.shape == (10, 224, 224, 3) and set(np.unique(dog.masks)) == {0, 1}
    source_mask = np.asarray(Image.open(os.path.join(source, "davis_dog", "1.png")))
    np.testing.assert_array_equal(dog.masks[0], source_mask >= 128)


def test_replaces_only_a_folder_marked_with_our_format(tmp_path, make_fss):
    """A folder holding some other project's manifest.json is never wiped."""
    make_fss(tmp_path / "fss", {"bus": 2, "cat": 2})
    out = tmp_path / "web_project"
    (out / "src").mkdir(parents=True)
    (out / "src" / "app.js").write_text("console.log(1)")
    (out / "manifest.json").write_text(json.dumps({"name": "my web app", "version": "1.0"}))
    with pytest.raises(ValueError, match="did not write"):
        converter.convert(str(tmp_path / "fss"), str(out), image_size=32, log=None)
    assert (out / "src" / "app.js").read_text() == "console.log(1)"
    assert json.loads((out / "manifest.json").read_text())["name"] == "my web app"
    converter.convert(str(tmp_path / "fss"), str(tmp_path / "shards"), image_size=32, log=None)
    converter.convert(str(tmp_path / "fss"), str(tmp_path / "shards"), image_size=32, log=None)
    assert sorted(load_tasks(str(tmp_path / "shards"), 32)) == ["bus", "cat"]  # ours: replaced


@pytest.mark.parametrize("field, value", [("image_size", "224"), ("image_size", 10**9),
                                          ("num_pairs", -1), ("num_pairs", 10**15),
                                          ("shards", None), ("shards", [{"file": "../x"}]),
                                          ("classes", ["bus"])])
def test_manifest_with_absurd_or_missing_fields_is_one_clear_error(tmp_path, make_fss, field,
                                                                   value):
    make_fss(tmp_path / "fss", {"bus": 2, "cat": 2})
    converter.convert(str(tmp_path / "fss"), str(tmp_path / "shards"), image_size=32, log=None)
    path = tmp_path / "shards" / "manifest.json"
    manifest = json.loads(path.read_text())
    if value is None:
        del manifest[field]
    else:
        manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"damaged: {field}") as error:
        load_tasks(str(tmp_path / "shards"), 32)
    assert "\n" not in str(error.value)
