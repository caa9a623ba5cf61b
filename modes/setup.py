"""What every mode of run_metasegnet.py checks first: the split, the class sizes, the config."""
from __future__ import annotations

import os

from adapt import protocol_hsnet
from args import Config
from errors import UserError
from data.splits import SHIPPED_LISTS, Splits, resolve_class_names, split_classes
from data.tasks import recorded_split
from meta.train import held_out_split
from storage import atomic

EVAL_CONFIG_NAME = "pretrained_eval_config.json"
FSS_TEST_LIST = "fss_test_set.txt"
FP_K_TEST_CLASSES = ("airliner", "bus", "motorbike", "potted_plant", "television")


class RunError(UserError):
    """A problem with the run's inputs; reported as one message, exit status 2."""


def write_config(run_dir: str, cfg: Config) -> None:
    os.makedirs(run_dir, exist_ok=True)
    # An evaluation of an existing checkpoint keeps the training run's config.json intact.
    path = os.path.join(run_dir, EVAL_CONFIG_NAME if cfg.run.pretrained else "config.json")
    atomic.write_text(path, cfg.to_json())
    print(f"Resolved config written to {path}", flush=True)


def _test_classes_file(cfg: Config) -> str | None:
    if cfg.data.test_tasks_file or not cfg.data.fss_1000:
        return cfg.data.test_tasks_file
    # --fss_1000 without a list: FSS-1000's own 240 test classes. A copy in or next to the shards
    # (where the paper's README puts it) comes first, then the one shipped in splits/.
    for candidate in (os.path.join(cfg.data.data_dir, FSS_TEST_LIST),
                      os.path.join(os.path.dirname(os.path.abspath(cfg.data.data_dir)),
                                   FSS_TEST_LIST)):
        if os.path.isfile(candidate):
            return candidate
    shipped = os.path.join(SHIPPED_LISTS, FSS_TEST_LIST)
    print(f"--fss_1000: meta-test classes from {shipped} (FSS-1000's test "
          f"split, as published with the paper's code)", flush=True)
    return shipped


def make_splits(cfg: Config, class_names: list[str]) -> Splits:
    """Split the classes as the flags say (FSS-1000 list, FP-k classes, random or given list).

    Args:
        cfg: the run config.
        class_names: classes found in --data-dir.

    Returns:
        Splits with a non-empty test split.
    """
    if cfg.data.fp_k_test_set:
        test = resolve_class_names(FP_K_TEST_CLASSES, class_names, source="--fp_k_test_set")
        rest = sorted(set(class_names) - set(test))
        cut = len(rest) - cfg.data.num_val_tasks
        splits = Splits(train=tuple(rest[:cut]), val=tuple(rest[cut:]), test=tuple(sorted(test)))
    else:
        splits = split_classes(class_names, test_tasks_file=_test_classes_file(cfg),
                               num_test_tasks=cfg.data.num_test_tasks,
                               num_val_tasks=cfg.data.num_val_tasks, seed=cfg.data.seed,
                               recorded=recorded_split(cfg.data.data_dir))
    if not splits.test:
        raise RunError("No meta-test classes: pass --test_tasks_file FILE, --num_test_tasks N or "
                       "--fss_1000.")
    # k-shot curves of a given init need no training classes (the paper's FP-k folder has none).
    if not splits.train and not (cfg.run.pretrained
                                 and cfg.run.run_k_shot_learning_curves_experiment):
        raise RunError("No meta-training classes left after the test/val split.")
    return splits


def check_class_sizes(cfg: Config, tasks, splits: Splits, eval_names) -> None:
    """Refuse, before anything is written, classes too small for the episodes the flags ask for.

    Args:
        cfg: the run config.
        tasks: class name -> ClassData.
        splits: the class splits.
        eval_names: the classes of the final evaluation.
    """
    episode = cfg.eval.shots + cfg.eval.num_query  # the monitor and the paper's protocol
    paper_episodes = splits.train + held_out_split(splits)[1]
    if cfg.eval.protocol != protocol_hsnet.PROTOCOL:  # else protocol_hsnet.check_classes
        paper_episodes += tuple(eval_names)
    needs = [(name, episode, f"--shots + {cfg.eval.num_query} queries")
             for name in dict.fromkeys(paper_episodes)]
    if not (cfg.run.pretrained or cfg.run.mtl or cfg.run.joint_train):
        needs += [(name, cfg.meta.train_shots, "--train-shots") for name in splits.train]
    small = [(name, len(tasks[name]), n, what) for name, n, what in needs if len(tasks[name]) < n]
    if small:
        name, have, n, what = min(small, key=lambda item: item[1])
        raise RunError(f"Class {name!r} has {have} pairs but {what} needs {n} "
                       f"({len({s[0] for s in small})} class(es) too small); lower the shots or "
                       f"convert more images per class.")
