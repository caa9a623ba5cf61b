"""Class splits: list files (CRLF, quotes, apostrophes), seeded test draw, alphabetical val."""
import os

import pytest

from data.splits import SHIPPED_LISTS, Splits, read_class_list, resolve_class_names, \
    split_classes
NAMES = [f"class_{i:02d}" for i in range(20)]


def test_list_file_strips_crlf_quotes_and_blanks(tmp_path):
    path = tmp_path / "test.txt"
    path.write_bytes(b'\xef\xbb\xbfbus\r\n"thors_hammer"\r\n\r\n  zebra \r\n# comment\r\nbus\r\n')
    assert read_class_list(str(path)) == ["bus", "thors_hammer", "zebra"]


def test_test_file_split_and_val_is_alphabetical_tail(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("class_03\nclass_17\n")
    splits = split_classes(NAMES, test_tasks_file=str(path), num_val_tasks=3)
    assert splits.test == ("class_03", "class_17")
    assert splits.val == ("class_16", "class_18", "class_19")  # last 3 non-test classes
    assert len(splits.train) == 15 and splits.train[0] == "class_00"
    assert not set(splits.train) & set(splits.val) | set(splits.train) & set(splits.test)


def test_random_test_tasks_are_seeded():
    a = split_classes(NAMES, num_test_tasks=5, seed=3)
    assert a == split_classes(list(reversed(NAMES)), num_test_tasks=5, seed=3)
    assert len(a.test) == 5 and len(a.train) == 15 and a.val == ()
    others = {split_classes(NAMES, num_test_tasks=5, seed=s).test for s in range(4, 9)}
    assert len(others | {a.test}) > 1


def test_no_test_option_means_no_test_classes():
    assert split_classes(NAMES) == Splits(train=tuple(NAMES), val=(), test=())


def test_apostrophe_free_name_matches_unique_folder(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text('"thors_hammer"\nabes_flyingfish\n')
    names = ["thor's_hammer", "abe's_flyingfish", "bus"]
    assert split_classes(names, test_tasks_file=str(path)).test == ("abe's_flyingfish",
                                                                    "thor's_hammer")


def test_unknown_and_ambiguous_names_fail_listing_all(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("bus\nunicorn\ndragon\n")
    with pytest.raises(ValueError, match=r"2 unknown class name\(s\): \['unicorn', 'dragon'\]"):
        split_classes(["bus", "cat"], test_tasks_file=str(path))
    with pytest.raises(ValueError, match="ambiguous.*'abs'"):
        resolve_class_names(["abs"], ["ab's", "a'bs"], source="x")


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        split_classes(NAMES, test_tasks_file="x.txt", num_test_tasks=2)
    with pytest.raises(ValueError, match="num_test_tasks"):
        split_classes(NAMES, num_test_tasks=20)
    with pytest.raises(ValueError, match="leave no meta-training class"):
        split_classes(NAMES, num_test_tasks=10, num_val_tasks=10)


def test_a_single_class_is_refused_with_the_reason_and_the_fix(tmp_path):
    """One class of data (e.g. to score an init under --protocol hsnet) leaves nothing to train
    on or to draw the final evaluation's train tasks from: both ways of naming it as the test
    class say so and how to fix it."""
    with pytest.raises(ValueError, match=r"--num_test_tasks must be in \[0, 0\] for the 1 "
                                         r"classes of the data: at least one class must stay"):
        split_classes(["bus"], num_test_tasks=1)
    path = tmp_path / "test.txt"
    path.write_text("bus\n")
    with pytest.raises(ValueError, match=r"^the 1 test classes leave no meta-training class .* "
                                         r"hold out fewer classes"):
        split_classes(["bus"], test_tasks_file=str(path))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        split_classes(NAMES, test_tasks_file="missing.txt")


def test_published_fss1000_lists():
    """The lists shipped in splits/, as ml4ai/mliis publishes them."""
    train_file = os.path.join(SHIPPED_LISTS, "fss_train_set.txt")
    test_file = os.path.join(SHIPPED_LISTS, "fss_test_set.txt")
    with open(test_file, "rb") as f:
        assert f.read().count(b"\r\n") == 239  # kept byte for byte: CRLF, no final newline
    test_names = read_class_list(test_file)  # CRLF file
    train_names = read_class_list(train_file)  # has "thors_hammer" in quotes
    assert len(test_names) == 240 and len(train_names) == 760
    assert all("\r" not in n and '"' not in n for n in test_names + train_names)
    # The 1000 FSS-1000 folder names: the folder is thor's_hammer, not thors_hammer.
    folders = test_names + [n.replace("thors_hammer", "thor's_hammer") for n in train_names]
    assert len(set(folders)) == 1000
    assert "thor's_hammer" in resolve_class_names(train_names, folders, source=train_file)
    splits = split_classes(folders, test_tasks_file=test_file, num_val_tasks=10)
    assert len(splits.test) == 240 and len(splits.train) == 750
    assert set(splits.train) | set(splits.val) == set(folders) - set(test_names)
    # ml4ai/mliis data/fss_1000_utils.py: the 10 alphabetically last training classes.
    assert set(splits.val) == {"zucchini", "zebra", "yurt", "yorkshire_terrier", "yonex_icon",
                               "yoga_pad", "yawl", "wrench", "wreck", "woodpecker"}
