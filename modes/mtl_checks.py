"""What the meta-transfer-learning phases refuse before they write anything, and the class
records that let them: `check_phase` (a resume with another config, missing weights, weights
trained or selected on classes the phase holds out) and `classes.json` (`write_classes`,
`read_classes`). modes/mtl.py runs the phases.
"""
from __future__ import annotations

import json
import os

from args import Config
from baselines.pretrain import BEST_WEIGHTS
from data.splits import Splits
from meta.settings import read_config
from storage import atomic, checkpoint

CLASSES_NAME = "classes.json"
# Settings a resumed MTL meta-training run may change.
RESUME_MAY_CHANGE = ("mtl.max_epoch", "mtl.phase", "mtl.eval_weights", "mtl.teshot",
                     "mtl.test_query", "mtl.dataset", "mtl.dataset_dir", "mtl.pre_init_weights",
                     "mtl.meta_label")
# Settings a resumed pre-training may change: its length, and the later phases' flags.
PRE_TRAIN_MAY_CHANGE = ("mtl.pre_max_epoch", "mtl.meta_lr1", "mtl.meta_lr2", "mtl.max_epoch",
                        "mtl.num_batch", "mtl.step_size", "mtl.gamma", "mtl.teshot",
                        "mtl.train_query", "mtl.test_query", "mtl.init_weights",
                        "mtl.eval_weights", "mtl.pre_init_weights", "mtl.meta_label")
# What a resume compares as files, not as path strings.
PATH_FIELDS = ("data.data_dir", "data.test_tasks_file", "mtl.dataset_dir", "mtl.init_weights")


def write_classes(out_dir: str, trained_on, selected_on, splits: Splits) -> None:
    """Record in `out_dir/classes.json` the classes a phase (and those before it) trained and
    selected on, and the test classes.

    Args:
        out_dir: the phase's folder.
        trained_on: classes trained on.
        selected_on: classes the best weights were selected on.
        splits: the class splits (their test classes are recorded).
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CLASSES_NAME)
    classes = {"trained_on": sorted(set(trained_on)), "selected_on": sorted(set(selected_on)),
               "test": list(splits.test)}
    atomic.write_json(path, classes, indent=1)


def read_classes(weights: str, flag: str) -> dict:
    """classes.json next to a phase output (the file's folder, a ckpt folder's run dir).

    Args:
        weights: a phase's output (folder, weights file or ckpt folder).
        flag: the flag that named it, for the message.

    Returns:
        the recorded classes.
    """
    folder = weights if os.path.isdir(weights) else os.path.dirname(os.path.abspath(weights))
    for candidate in (folder, os.path.dirname(os.path.abspath(folder))):
        path = os.path.join(candidate, CLASSES_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    raise FileNotFoundError(f"{flag} {weights!r}: no {CLASSES_NAME} next to it, so the classes it "
                            f"was trained on are unknown. Pass the output of --phase pre_train / "
                            f"meta_train.")


def check_unseen(held_out, seen: dict, flag: str, weights: str) -> None:
    """Refuse weights trained or selected on classes this run holds out.

    Args:
        held_out: the classes this run evaluates or holds out.
        seen: read_classes() of the weights.
        flag: the flag that named them.
        weights: its value.
    """
    overlap = sorted(set(held_out) & (set(seen["trained_on"]) | set(seen["selected_on"])))
    if overlap:
        raise ValueError(f"{flag} {weights!r} was trained or selected on {len(overlap)} of the "
                         f"classes this run holds out ({overlap[:5]}...). Use the same split "
                         f"flags (--num_test_tasks/--test_tasks_file, --num_val_tasks, --seed) "
                         f"in every phase.")


def pretrained_weights_path(init_weights: str | None) -> str:
    """The pre-trained U-Net file from --init_weights (a .weights.h5 or a pre_train folder).

    Args:
        init_weights: the flag's value.

    Returns:
        path of an existing .weights.h5 file.
    """
    if not init_weights:
        raise ValueError("--phase meta_train starts from a pre-trained U-Net: pass --init_weights "
                         f"<checkpoint>/pre_train/{BEST_WEIGHTS} (written by --phase pre_train).")
    path = os.path.join(init_weights, BEST_WEIGHTS) if os.path.isdir(init_weights) else \
        init_weights
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init_weights {init_weights!r}: {path} does not exist. Run "
                                f"--phase pre_train first.")
    return path


def check_resumable(cfg: Config, path: str) -> None:
    """Refuse to resume a phase's checkpoint written with other settings (as meta-training).

    Args:
        cfg: the run config.
        path: the checkpoint the phase would resume.
    """
    # The head dropout was a model setting when older versions wrote these checkpoints.
    if cfg.mtl.phase == "pre_train":
        sections = ["data", "model", "loss", "mtl", "meta.inner.aug_rate",
                    "meta.inner.dropout_rate", "meta.seed", "meta.monitor_tasks"]
        ignore = PRE_TRAIN_MAY_CHANGE
    else:
        sections = ["data", "model", "loss", "mtl", "adapt.dropout_rate"]
        ignore = RESUME_MAY_CHANGE
    problems = checkpoint.config_differences(
        read_config(checkpoint.read_config(path)), json.loads(cfg.to_json()), sections,
        ignore=ignore, files=PATH_FIELDS)
    if problems:
        raise ValueError(f"Cannot resume {path}: its config differs from this run's:\n  "
                         + "\n  ".join(problems) + "\nRerun with the checkpoint's flags (its "
                         "config.json) or use a fresh --checkpoint directory.")


def check_phase(cfg: Config, splits: Splits, eval_names, out_dir: str) -> None:
    """Refuse, before the phase writes anything, what it would refuse later.

    A resume whose config differs (every phase that trains), an --init_weights or --eval_weights
    that is missing or was trained or selected on classes this run holds out.

    Args:
        cfg: the run config.
        splits: the class splits (unused by the multi-class pre-training: pass empty ones).
        eval_names: the classes meta_eval evaluates.
        out_dir: the phase's folder.
    """
    resumed = checkpoint.latest_checkpoint(out_dir) if os.path.isdir(out_dir) else None
    if resumed is not None and cfg.mtl.phase != "meta_eval":
        check_resumable(cfg, resumed)
    if cfg.mtl.phase == "pre_train" and resumed is None and cfg.mtl.pre_init_weights and \
            not os.path.isfile(cfg.mtl.pre_init_weights):
        raise FileNotFoundError(f"--pre_init_weights {cfg.mtl.pre_init_weights!r} does not "
                                f"exist (a .weights.h5 of the plain U-Net).")
    if cfg.mtl.phase == "meta_train" and resumed is None:
        seen = read_classes(pretrained_weights_path(cfg.mtl.init_weights), "--init_weights")
        check_unseen(splits.test, seen, "--init_weights", cfg.mtl.init_weights)
    if cfg.mtl.phase == "meta_eval":
        if not cfg.mtl.eval_weights:
            raise ValueError("--phase meta_eval needs --eval_weights <checkpoint>/meta_train "
                             "(written by --phase meta_train).")
        if not os.path.isfile(os.path.join(cfg.mtl.eval_weights, "state.json")) and not (
                os.path.isdir(cfg.mtl.eval_weights)
                and checkpoint.latest_checkpoint(cfg.mtl.eval_weights)):
            raise FileNotFoundError(f"--eval_weights {cfg.mtl.eval_weights!r} holds no "
                                    f"checkpoint: pass <checkpoint>/meta_train (written by "
                                    f"--phase meta_train) or one of its ckpt-* folders.")
        check_unseen(eval_names, read_classes(cfg.mtl.eval_weights, "--eval_weights"),
                      "--eval_weights", cfg.mtl.eval_weights)
        if cfg.mtl.init_weights:
            check_unseen(eval_names, read_classes(
                pretrained_weights_path(cfg.mtl.init_weights), "--init_weights"),
                "--init_weights", cfg.mtl.init_weights)
