"""The converter reads MTL-Segmentation's FewShotPreprocessing.py folders
({train,val,test}/images/<class>/ + labels/<class>/) and keeps their class split."""
import json
import os
import shutil

import numpy as np
import pytest

from data.splits import recorded_splits, split_classes
from data.tasks import load_tasks
from fss_1000_image_to_tfrecord import convert


def _seed_layout(src, out, assign):
    """assign(class, stem) -> split; copies <class>/<stem>.jpg/.png into MTL-Segmentation's
    folders."""
    for name in sorted(os.listdir(src)):
        for file in sorted(os.listdir(os.path.join(src, name))):
            stem, ext = os.path.splitext(file)
            kind = "images" if ext == ".jpg" else "labels"
            folder = os.path.join(out, assign(name, stem), kind, name)
            os.makedirs(folder, exist_ok=True)
            shutil.copy(os.path.join(src, name, file), folder)


def test_class_disjoint_folders_become_the_recorded_split(tmp_path, make_fss):
    written = make_fss(tmp_path / "fss", {"a": 3, "b": 3, "c": 2, "d": 2})
    where = {"a": "train", "b": "train", "c": "val", "d": "test"}
    _seed_layout(tmp_path / "fss", tmp_path / "seed", lambda c, s: where[c])
    convert(str(tmp_path / "seed"), str(tmp_path / "shards"), image_size=32, log=None)
    with open(tmp_path / "shards" / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["split"] == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    tasks = load_tasks(str(tmp_path / "shards"))
    for name, pairs in written.items():  # masks come from labels/<class>/, in stem order
        np.testing.assert_array_equal(tasks[name].masks, np.stack([m for _, m in pairs]))
    splits = split_classes(sorted(tasks), recorded=manifest["split"])
    assert (splits.train, splits.val, splits.test) == (("a", "b"), ("c",), ("d",))
    # a split flag wins over the recorded split
    assert split_classes(sorted(tasks), num_test_tasks=1, recorded=manifest["split"]).val == ()


def test_per_image_split_of_the_seed_is_merged_and_records_no_split(tmp_path, make_fss):
    make_fss(tmp_path / "fss", {"a": 4, "b": 4})
    # FewShotPreprocessing.py: each class's pairs spread over train / val / test
    split_of = {"1": "train", "2": "train", "3": "val", "4": "test"}
    _seed_layout(tmp_path / "fss", tmp_path / "seed", lambda c, s: split_of[s])
    lines = []
    convert(str(tmp_path / "seed"), str(tmp_path / "shards"), image_size=32, log=lines.append)
    with open(tmp_path / "shards" / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["split"] is None and manifest["classes"] == {"a": 4, "b": 4}
    assert any("not the classes" in line for line in lines)


def test_missing_labels_are_reported_per_image(tmp_path, make_fss):
    make_fss(tmp_path / "fss", {"a": 3, "b": 3})
    _seed_layout(tmp_path / "fss", tmp_path / "seed", lambda c, s: "train")
    os.remove(tmp_path / "seed" / "train" / "labels" / "a" / "2.png")
    report = convert(str(tmp_path / "seed"), str(tmp_path / "shards"), image_size=32, log=None)
    assert [str(p) for p in report.problems] == [
        f"{tmp_path / 'seed' / 'train' / 'images' / 'a' / '2.jpg'}: image without mask "
        f"(expected 2.png)"]
    assert report.classes == {"a": 2, "b": 3}


def test_a_recorded_split_naming_unknown_classes_is_an_error():
    with pytest.raises(ValueError, match="unknown class"):
        recorded_splits({"train": ["a"], "test": ["zzz"]}, ["a", "b"])
