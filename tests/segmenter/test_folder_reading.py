"""--fine-tune-task folder reader: sizes, pairing and every rejected input names its file."""
import os

import numpy as np
import pytest
from PIL import Image

from segmenter.folder import load_user_task


def _write_pair(folder, stem, width, height, seed, mask_size=None):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(
        os.path.join(folder, f"{stem}.jpg"))
    mw, mh = mask_size or (width, height)
    mask = np.zeros((mh, mw), np.uint8)
    mask[mh // 4: mh // 2, mw // 4: mw // 2] = 255
    Image.fromarray(mask).save(os.path.join(folder, f"{stem}.png"))


@pytest.fixture()
def task_dir(tmp_path):
    support, query = tmp_path / "support", tmp_path / "query"
    support.mkdir()
    query.mkdir()
    _write_pair(str(support), "1", 90, 60, 0)
    _write_pair(str(support), "2", 40, 70, 1)
    _write_pair(str(query), "10", 50, 30, 2)  # a query with its ground truth
    Image.fromarray(np.zeros((33, 21, 3), np.uint8)).save(str(query / "9.jpg"))
    (support / "notes.txt").write_text("ignored")
    return tmp_path


def test_reads_any_size_and_keeps_it(task_dir):
    task = load_user_task(str(task_dir))
    # Every image at its own size: the model's side is the adapter's business.
    assert [i.shape for i in task.support_images] == [(60, 90, 3), (70, 40, 3)]
    assert [m.shape for m in task.support_masks] == [(60, 90), (70, 40)]
    assert all(set(np.unique(m)) == {0, 1} for m in task.support_masks)
    # Natural order: 9 before 10.
    assert [os.path.basename(p) for p in task.query_paths] == ["9.jpg", "10.jpg"]
    assert [q.shape for q in task.query_images] == [(33, 21, 3), (30, 50, 3)]
    assert task.query_masks[0] is None and task.query_masks[1].shape == (30, 50)
    assert task.query_masks[1].sum() == (30 // 2 - 30 // 4) * (50 // 2 - 50 // 4)


def test_missing_mask_names_the_image(task_dir):
    os.remove(task_dir / "support" / "2.png")
    with pytest.raises(ValueError, match=r"2\.jpg' has no mask"):
        load_user_task(str(task_dir))


def test_orphan_mask_names_the_mask(task_dir):
    os.remove(task_dir / "support" / "2.jpg")
    with pytest.raises(ValueError, match=r"2\.png' has no image"):
        load_user_task(str(task_dir))


def test_mask_size_mismatch(task_dir):
    _write_pair(str(task_dir / "support"), "3", 64, 64, 3, mask_size=(32, 64))
    with pytest.raises(ValueError, match=r"3\.png' is 32x64 but its image .*3\.jpg' is 64x64"):
        load_user_task(str(task_dir))


def test_unreadable_file_is_named(task_dir):
    (task_dir / "query" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"Cannot read image .*broken\.jpg"):
        load_user_task(str(task_dir))


def test_missing_parts(task_dir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    (empty / "support").mkdir()
    (empty / "query").mkdir()
    with pytest.raises(ValueError, match="No support pairs"):
        load_user_task(str(empty))
    _write_pair(str(empty / "support"), "1", 20, 20, 0)
    with pytest.raises(ValueError, match="No query images"):
        load_user_task(str(empty))
    os.rmdir(empty / "query")
    with pytest.raises(FileNotFoundError, match="query"):
        load_user_task(str(empty))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_user_task(str(empty / "nope"))


def test_a_query_link_that_leads_nowhere_is_named(task_dir):
    import shutil
    shutil.rmtree(task_dir / "query")
    os.symlink(task_dir / "query", task_dir / "query")  # a loop
    with pytest.raises(FileNotFoundError, match=r"query' is a symbolic link .*leads nowhere"):
        load_user_task(str(task_dir))
