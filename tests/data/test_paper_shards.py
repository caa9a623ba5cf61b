"""The paper's shard format: detection, identical arrays to our converter, FP-k folders, errors."""
import gzip
import os

import numpy as np
import pytest

import run_metasegnet
from data import paper_shards
from data.tasks import data_format, load_tasks
from fss_1000_image_to_tfrecord import convert

from tests.fixtures.paper_shards_writer import convert_like_the_paper, paper_record, write_paper_shard

SIZE = 224


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """One FSS-layout folder at 224 px converted by our converter and by the paper's."""
    from fss_fixtures import make_fss
    root = tmp_path_factory.mktemp("paper_formats")
    written = make_fss(str(root / "fss"), {"cat": 3, "thor's_hammer": 2}, size=SIZE, seed=3)
    convert(str(root / "fss"), str(root / "ours"), image_size=SIZE, log=None)
    counts = convert_like_the_paper(str(root / "fss"), str(root / "paper"), seed=1)
    return root, written, counts


def _sorted_pairs(task):
    order = sorted(range(len(task)), key=lambda i: task.images[i].tobytes())
    return task.images[order], task.masks[order]


def test_paper_shards_give_the_same_arrays_as_our_converter(both_formats):
    root, written, counts = both_formats
    assert counts == {"cat": 3, "thor's_hammer": 2}
    assert data_format(str(root / "paper")) == "paper" and data_format(str(root / "ours")) == "metaseg"
    ours, paper = load_tasks(str(root / "ours"), SIZE), load_tasks(str(root / "paper"), SIZE)
    assert sorted(paper) == sorted(ours) == ["cat", "thor's_hammer"]
    for name in ours:
        # the paper's converter shuffles the pairs of a class: compare them in one order
        ours_images, ours_masks = _sorted_pairs(ours[name])
        paper_images, paper_masks = _sorted_pairs(paper[name])
        np.testing.assert_array_equal(paper_images, ours_images)
        np.testing.assert_array_equal(paper_masks, ours_masks)
        assert paper_masks.dtype == np.uint8 and set(np.unique(paper_masks)) <= {0, 1}
        assert paper_masks.sum() == sum(int(m.sum()) for _, m in written[name])


def test_zero_one_masks_and_255_masks_binarize_alike(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = (rng.random((SIZE, SIZE)) < 0.3).astype(np.uint8)
    write_paper_shard(str(tmp_path / "a.tfrecord.gzip"),
                      [paper_record(image, mask * 255), paper_record(image, mask)])
    task = load_tasks(str(tmp_path))["a"]
    np.testing.assert_array_equal(task.masks, np.stack([mask, mask]))
    np.testing.assert_array_equal(task.images[0], image)


def test_fp_k_folder_merges_each_concepts_files(tmp_path):
    rng = np.random.default_rng(1)

    def shard(name, n):
        records = [paper_record(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                                np.full((SIZE, SIZE), 255 * (i % 2), np.uint8)) for i in range(n)]
        write_paper_shard(str(tmp_path / f"{name}.tfrecord.gzip"), records)
    for name, n in (("airliner", 2), ("aeroplane_train", 1), ("aeroplane_val", 1), ("bus", 2),
                    ("motorbike", 1), ("pottedplant_val", 1), ("television", 1), ("tvmonitor_train", 2)):
        shard(name, n)
    files = paper_shards.class_files(str(tmp_path), fp_k=True)
    assert list(files) == ["airliner", "bus", "motorbike", "potted_plant", "television"]
    assert [os.path.basename(p) for p in files["airliner"]] == [
        "aeroplane_train.tfrecord.gzip", "aeroplane_val.tfrecord.gzip", "airliner.tfrecord.gzip"]
    tasks = load_tasks(str(tmp_path), SIZE, fp_k=True)
    assert {n: len(t) for n, t in tasks.items()} == {"airliner": 4, "bus": 2, "motorbike": 1,
                                                     "potted_plant": 1, "television": 3}
    # Without --fp_k_test_set every file is a class: the prefix "bus" does not swallow
    # "bustard" or "business_card".
    shard("bustard", 1)
    shard("business_card", 1)
    files = paper_shards.class_files(str(tmp_path))
    assert len(files) == 10 and files["bustard"] == [str(tmp_path / "bustard.tfrecord.gzip")]


def test_prefix_grouping_only_for_the_fp_k_set_and_its_notice_reaches_the_screen(tmp_path,
                                                                                capsys):
    for name in ("bus", "bustard", "business_card", "motorbike", "television"):
        write_paper_shard(str(tmp_path / f"{name}.tfrecord.gzip"), [_good_record()] * 2)
    assert sorted(load_tasks(str(tmp_path), SIZE)) == [
        "bus", "business_card", "bustard", "motorbike", "television"]
    run_metasegnet.show_library_logs()  # the screen of a run_metasegnet.py run
    merged = load_tasks(str(tmp_path), SIZE, fp_k=True)
    assert sorted(merged) == ["bus", "motorbike", "television"] and len(merged["bus"]) == 6
    assert ("--fp_k_test_set: class bus is read from bus.tfrecord.gzip, "
            "business_card.tfrecord.gzip, bustard.tfrecord.gzip") in capsys.readouterr().out


def test_entries_that_are_no_shard_files_say_what_they_are(tmp_path):
    write_paper_shard(str(tmp_path / "x.tfrecord.gzip"), [_good_record()])
    uncompressed = gzip.decompress((tmp_path / "x.tfrecord.gzip").read_bytes())
    cases = {"uncompressed": (lambda p: p.write_bytes(uncompressed),
                              "is an uncompressed TFRecord, but the paper's shards are "
                              "GZIP-compressed: compress it (mv "),
             "folder": (lambda p: p.mkdir(),
                        "is a folder, not a shard file; move it out of --data-dir"),
             "dangling": (lambda p: os.symlink(tmp_path / "gone", p),
                          "is a broken symbolic link (to ")}
    for name, (make, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        write_paper_shard(str(folder / "fine.tfrecord.gzip"), [_good_record()] * 2)
        make(folder / "bad.tfrecord.gzip")
        with pytest.raises(ValueError) as info:
            load_tasks(str(folder), SIZE)
        assert message in str(info.value) and "\n" not in str(info.value), (name, info.value)


def _good_record():
    return paper_record(np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE), np.uint8))


def test_damaged_files_fail_in_one_line_naming_the_file(tmp_path):
    def folder(name, write):
        d = tmp_path / name
        d.mkdir()
        write_paper_shard(str(d / "fine.tfrecord.gzip"), [_good_record()] * 2)
        path = str(d / "bad.tfrecord.gzip")
        write(path)
        return str(d), path

    def truncated(path):
        write_paper_shard(path, [_good_record()] * 3)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])

    def wrong_length(path):
        write_paper_shard(path, [_good_record(), paper_record(
            np.zeros((SIZE, SIZE - 1, 3), np.uint8), np.zeros((SIZE, SIZE), np.uint8))])

    def not_gzip(path):
        open(path, "wb").write(b"this is no tfrecord" * 100)

    def not_an_example(path):
        write_paper_shard(path, [gzip.compress(b"x")])

    cases = {"truncated": (truncated, "truncated or corrupt"),
             "wrong_length": (wrong_length, "record 1 has a 149856-byte image"),
             "empty": (lambda p: write_paper_shard(p, []), "holds no records"),
             "not_gzip": (not_gzip, "is not GZIP-compressed (no gzip header) and is no "
                                    "TFRecord either"),
             "not_an_example": (not_an_example, "not a tf.train.Example")}
    for name, (write, message) in cases.items():
        directory, path = folder(name, write)
        with pytest.raises(ValueError) as info:
            load_tasks(directory, SIZE)
        text = str(info.value)
        assert path in text and message in text and "\n" not in text, (name, text)


def test_image_size_other_than_224_is_an_error(tmp_path):
    write_paper_shard(str(tmp_path / "a.tfrecord.gzip"), [_good_record()])
    with pytest.raises(ValueError, match="--image_size 64 does not match .* Pass --image_size 224"):
        load_tasks(str(tmp_path), 64)


def test_a_folder_with_neither_format_names_both(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert data_format(str(tmp_path)) == "metaseg"
    with pytest.raises(FileNotFoundError, match="tfrecord.gzip files of the paper's format"):
        load_tasks(str(tmp_path))
