"""Meta-train / meta-val / meta-test class splits (ml4ai/mliis data/fss_1000_utils.py).

Rules, in order (when the data records its own split, e.g. MTL-Segmentation's
`{train,val,test}/images/<class>/` folders converted by fss_1000_image_to_tfrecord.py, and no
split option is given, that split is used instead):
1. test: the classes named in `test_tasks_file` (one per line), or `num_test_tasks` classes drawn
   with `np.random.default_rng(seed)` from the sorted class names, or none.
2. val: the `num_val_tasks` alphabetically last (code-point order) remaining classes, as the
   reference does; deterministic and independent of the seed.
3. train: everything else.

Published list files are messy: the 240-class test list has CRLF endings and the 760-class train
list writes `"thors_hammer"` (quoted, no apostrophe) for the folder `thor's_hammer`. So a list is
read with whitespace/CR and one pair of surrounding quotes stripped, and a name that is not an
exact class is matched ignoring apostrophes when that match is unique. Anything else raises,
listing every unmatched name: a silently dropped test class would change the benchmark.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_APOSTROPHES = ("'", "\u2019")
# FSS-1000's published split lists (ml4ai/mliis data/), shipped in the repository's splits/ folder.
SHIPPED_LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "splits")


@dataclass(frozen=True)
class Splits:
    """Class names of each split, each tuple sorted; the three are disjoint.

    Attributes:
        train: meta-training classes.
        val: meta-validation classes (empty when num_val_tasks = 0).
        test: meta-test classes.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def read_class_list(path: str) -> list[str]:
    """Read a class list file: one class per line.

    Strips whitespace (including the CR of CRLF files), a UTF-8 BOM and one pair of surrounding
    quotes; skips blank lines and lines starting with '#'; drops repeated names.

    Args:
        path: text file.

    Returns:
        class names in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no names.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class list file not found: {path!r}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    names: list[str] = []
    for line in lines:
        name = line.strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
            name = name[1:-1].strip()
        if name and not name.startswith("#") and name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"Class list file {path!r} holds no class names.")
    return names


def _without_apostrophes(name: str) -> str:
    for mark in _APOSTROPHES:
        name = name.replace(mark, "")
    return name


def resolve_class_names(names: Iterable[str], class_names: Iterable[str],
                        source: str = "class list") -> list[str]:
    """Map listed names onto existing class names (exact, else unique apostrophe-free match).

    Args:
        names: names as listed (e.g. from `read_class_list`).
        class_names: the classes that exist (folder/shard class names).
        source: where the names came from, for the error message (e.g. the file path).

    Returns:
        the matching existing class names, in the order listed.

    Raises:
        ValueError: listing every name with no match or with several apostrophe-free matches.
    """
    available = set(class_names)
    loose: dict[str, list[str]] = {}
    for name in sorted(available):
        loose.setdefault(_without_apostrophes(name), []).append(name)
    resolved, unknown, ambiguous = [], [], []
    for name in names:
        if name in available:
            resolved.append(name)
            continue
        candidates = loose.get(_without_apostrophes(name), [])
        if len(candidates) == 1:
            resolved.append(candidates[0])
        elif candidates:
            ambiguous.append(f"{name!r} (could be {candidates})")
        else:
            unknown.append(name)
    if unknown or ambiguous:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown class name(s): {unknown}")
        if ambiguous:
            parts.append(f"{len(ambiguous)} ambiguous name(s): {', '.join(ambiguous)}")
        raise ValueError(f"{source}: {'; '.join(parts)}. Known classes are the {len(available)} "
                         f"class folders of the dataset; fix the list or the data.")
    return resolved


def recorded_splits(recorded: Mapping[str, Sequence[str]], class_names: Sequence[str],
                    source: str = "the manifest's split") -> Splits:
    """A split stored with the data ({"train": [...], "val": [...], "test": [...]}) as Splits.

    Args:
        recorded: class lists per split; classes of the data listed nowhere are meta-train.
        class_names: every available class.
        source: for error messages.

    Returns:
        Splits.

    Raises:
        ValueError: unknown names, or a class listed in two splits.
    """
    names = sorted(set(class_names))
    lists = {k: set(resolve_class_names(recorded.get(k, ()), names, source=f"{source} ({k})"))
             for k in ("train", "val", "test")}
    twice = sorted((lists["train"] & lists["val"]) | (lists["train"] & lists["test"])
                   | (lists["val"] & lists["test"]))
    if twice:
        raise ValueError(f"{source}: {len(twice)} class(es) are in two splits ({twice[:5]}); "
                         f"pass split flags (--num_test_tasks / --test_tasks_file) instead.")
    train = set(names) - lists["val"] - lists["test"]
    return Splits(train=tuple(sorted(train)), val=tuple(sorted(lists["val"])),
                  test=tuple(sorted(lists["test"])))


def split_classes(class_names: Sequence[str], *, test_tasks_file: str | None = None,
                  num_test_tasks: int = 0, num_val_tasks: int = 0, seed: int = 0,
                  recorded: Mapping[str, Sequence[str]] | None = None) -> Splits:
    """Split classes into meta-train / meta-val / meta-test (rules in the module docstring).

    Args:
        class_names: every available class.
        test_tasks_file: list file of the test classes (exclusive with num_test_tasks).
        num_test_tasks: draw this many test classes at random (seeded) instead.
        num_val_tasks: the alphabetically last N non-test classes become validation classes.
        seed: seeds the num_test_tasks draw.
        recorded: the data's own split (manifest "split"), used when test_tasks_file,
            num_test_tasks and num_val_tasks are all unset.

    Returns:
        Splits with sorted, disjoint train/val/test tuples.

    Raises:
        ValueError: both test options given, counts out of range, unknown names in the file, or
            no training class left.
    """
    names = sorted(set(class_names))
    if recorded and test_tasks_file is None and not num_test_tasks and not num_val_tasks:
        return recorded_splits(recorded, names)
    if test_tasks_file is not None and num_test_tasks:
        raise ValueError(f"Give either test_tasks_file or num_test_tasks, not both. Received: "
                         f"test_tasks_file={test_tasks_file!r}, num_test_tasks={num_test_tasks}")
    if not 0 <= num_test_tasks < len(names):
        raise ValueError(f"--num_test_tasks must be in [0, {len(names) - 1}] for the "
                         f"{len(names)} classes of the data: at least one class must stay a "
                         f"meta-training class (training and the final evaluation's train tasks "
                         f"adapt on them). Received: {num_test_tasks}; lower it or add classes.")
    if num_val_tasks < 0:
        raise ValueError(f"num_val_tasks must be >= 0. Received: {num_val_tasks}")
    if test_tasks_file is not None:
        test = set(resolve_class_names(read_class_list(test_tasks_file), names,
                                       source=f"test_tasks_file {test_tasks_file!r}"))
    elif num_test_tasks:
        rng = np.random.default_rng(seed)
        test = {names[i] for i in rng.choice(len(names), size=num_test_tasks, replace=False)}
    else:
        test = set()
    rest = [name for name in names if name not in test]
    if num_val_tasks >= len(rest):
        held = f"--num_val_tasks {num_val_tasks} and the " if num_val_tasks else "the "
        raise ValueError(f"{held}{len(test)} test classes leave no meta-training class among "
                         f"the {len(names)} classes of the data (training and the final "
                         f"evaluation's train tasks adapt on them); hold out fewer classes "
                         f"(--num_val_tasks, --num_test_tasks or --test_tasks_file) or add "
                         f"classes.")
    cut = len(rest) - num_val_tasks
    return Splits(train=tuple(rest[:cut]), val=tuple(rest[cut:]), test=tuple(sorted(test)))
