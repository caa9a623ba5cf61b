"""The modes of run_metasegnet.py in one table: which flags choose each, which function runs it,
the flag groups it reads and those it refuses, and the flags it needs; and which flag chose a
path an OS error names.

A flag given to a mode that never reads it would change nothing while the output looked as if
it had, so it is refused, naming the flag meant when another mode has one for the same idea
(`--shot` and `--shots`). Two modes are never combined: the flags that choose one belong to a
group the others refuse (`--serve --fine-tune-task` is refused by --serve). The refusals derive
from `MODES`; args.py checks values only. A new mode is a row of MODES (and a function of
run_metasegnet.py); a new group of mode-specific flags a row of FLAG_GROUPS.

    python mode_flags.py FLAGS...   # exit 0, or 2 with the line run_metasegnet.py would print

checks a command line as run_metasegnet.py does before it starts (run.sh, before it deletes the
demo's old runs), without importing TensorFlow.
"""
from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from typing import Sequence

# MTL-Segmentation's flags, read by the --phase modes only -> the meta-learning modes' flag for
# the same idea (None: no counterpart).
MTL_FLAGS = {
    "--phase": None, "--shot": "--shots", "--teshot": "--shots", "--way": None,
    "--train_query": None, "--val_query": None, "--test_query": None,
    "--update_step": "--eval-iters", "--base_lr": "--learning-rate", "--meta_lr1": "--meta-step",
    "--meta_lr2": "--meta-step", "--max_epoch": "--meta-iters", "--num_batch": "--meta-iters",
    "--step_size": None, "--gamma": None, "--init_weights": "--checkpoint",
    "--eval_weights": "--checkpoint", "--pre_max_epoch": "--joint_train_epochs",
    "--pre_batch_size": "--inner-batch", "--pre_lr": "--learning-rate", "--pre_gamma": None,
    "--pre_step_size": None, "--pre_custom_weight_decay": None, "--pre_custom_momentum": None,
    "--dataset": None, "--dataset_dir": None, "--num_classes": None, "--pre_init_weights": None,
    "--meta_label": None,
}
# The meta-learning modes' flags that the --phase modes never read -> their MTL counterpart.
META_LEARNING_FLAGS = {
    "--shots": "--teshot (meta_eval) or --shot (meta_train's tasks)",
    "--train-shots": "--shot", "--meta-iters": "--max_epoch x --num_batch",
    "--meta-batch": None, "--meta-step": "--meta_lr1 and --meta_lr2",
    "--meta-step-final": "--gamma and --step_size", "--inner-iters": "--update_step",
    "--eval-iters": "--update_step", "--inner-batch": "--pre_batch_size",
    "--eval-batch": None, "--learning-rate": "--base_lr (pre-training: --pre_lr)",
    "--eval-interval": "--num_batch", "--foml": None, "--foml-tail": None,
    "--joint_train_epochs": "--pre_max_epoch",
}
# Groups of flags: name -> (who reads them, {flag: the flag meant elsewhere, or None}). The
# flags that choose a mode are in the group of the modes they choose.
FLAG_GROUPS = {
    "mtl": ("the --phase (MTL) modes", MTL_FLAGS),
    "meta_learning": ("meta-learning runs", META_LEARNING_FLAGS),
    "page": ("--serve", {"--serve": None, "--serve_dir": None, "--serve_keep_hours": None}),
    "label_studio": ("--label_studio", {"--label_studio": None}),
    "server": ("--serve and --label_studio", {"--host": None, "--port": None}),
    "own_folder": ("--fine-tune-task", {"--fine-tune-task": None,
                                        "--fine-tuned-checkpoint": None}),
    "masks_out": ("the modes that segment a folder (--fine-tune-task, --query_dir)", {
        "--query_dir": None, "--masks_dir": None, "--mask_format": None, "--query_masks": None,
        "--restart": None}),
    "shards": ("the modes that read FSS-1000 shards", {"--data-dir": None,
                                                       "--mdataset_dir": None}),
    "export": ("--export and the modes that load an init", {
        "--export": None, "--export_format": None, "--export_keras": None}),
    "evaluate_only": ("meta-learning runs", {"--pretrained": None}),
    "joint": ("--joint_train", {"--joint_train": None}),
    "uho": ("meta-learning and joint-training runs", {
        "--optimize_update_hyperparms_on_val_set": None}),
    "kshot": ("meta-learning runs", {"--run_k_shot_learning_curves_experiment": None}),
    "distribute": ("meta-learning runs", {"--distribute": None}),
}


@dataclass(frozen=True)
class Mode:
    """One mode of run_metasegnet.py.

    Attributes:
        function: run_metasegnet.py's function that runs it.
        name: how messages name it.
        reads: the FLAG_GROUPS it reads.
        refuses: the FLAG_GROUPS it refuses (every group is read or refused: a test checks).
        needs: flags it cannot run without (each entry: one flag, or "a|b" for either).
    """

    function: str
    name: str
    reads: tuple[str, ...]
    refuses: tuple[str, ...]
    needs: tuple[str, ...] = ()


def _mode(function, name, reads, needs=()) -> Mode:
    return Mode(function, name, tuple(reads), tuple(g for g in FLAG_GROUPS if g not in reads),
                tuple(needs))


SHARDS = "--data-dir|--mdataset_dir"
# What a needed flag is, for the message.
NEEDS = {"--checkpoint": ("--checkpoint INIT", "a meta-training run, fine-tuned weights, an MTL "
                          "phase folder or the paper's TF1 checkpoint"),
         SHARDS: ("--data-dir SHARDS (or --mdataset_dir)", "a folder written by "
                  "fss_1000_image_to_tfrecord.py"),
         "--masks_dir": ("--masks_dir OUT", "the folder the masks go to")}
# mode -> its row, in the order mode_of tries them. The modes that load an init read the
# adaptation flags (meta_learning's --learning-rate, --eval-iters, ...) as overrides.
MODES = {
    "serve": _mode("serve", "--serve", ["page", "server", "meta_learning"], ["--checkpoint"]),
    "label_studio": _mode("label_studio", "--label_studio",
                          ["label_studio", "server", "meta_learning"], ["--checkpoint"]),
    "export_only": _mode("export_only", "--export", ["export", "meta_learning", "evaluate_only"],
                         ["--checkpoint"]),
    "fine_tune_only": _mode("fine_tune_only", "--fine-tune-task",
                            ["own_folder", "masks_out", "meta_learning", "evaluate_only",
                             "shards"], ["--checkpoint"]),
    "segment_only": _mode("segment_only", "--query_dir without --fine-tune-task",
                          ["masks_out"], ["--checkpoint", "--masks_dir"]),
    "multiclass_pre_train": _mode("multiclass_pre_train", "--phase runs", ["mtl", "shards"]),
    "mtl_pre_train": _mode("mtl_pre_train", "--phase runs", ["mtl", "shards"], [SHARDS]),
    "mtl_meta_train": _mode("mtl_meta_train", "--phase runs", ["mtl", "shards"], [SHARDS]),
    "mtl_meta_eval": _mode("mtl_meta_eval", "--phase runs", ["mtl", "shards", "export"],
                           [SHARDS]),
    "joint_train": _mode("joint_train", "--joint_train",
                         ["meta_learning", "shards", "joint", "uho", "export"], [SHARDS]),
    "fine_tune_after_uho": _mode("fine_tune_after_uho", "--fine-tune-task with UHO",
                                 ["meta_learning", "shards", "own_folder", "masks_out",
                                  "evaluate_only", "uho", "distribute"], [SHARDS]),
    "k_shot_curves": _mode("k_shot_curves", "--run_k_shot_learning_curves_experiment",
                           ["meta_learning", "shards", "evaluate_only", "uho", "kshot",
                            "distribute", "export"], [SHARDS]),
    "meta_train": _mode("meta_train", "meta-learning runs (no --phase)",
                        ["meta_learning", "shards", "evaluate_only", "uho", "distribute",
                         "export"], [SHARDS]),
}


def mode_of(cfg) -> str:
    """Which of MODES the flags ask for (the first whose choosing flags are given).

    Args:
        cfg: the parsed args.Config.

    Returns:
        the mode's name.
    """
    run = cfg.run
    if run.serve:
        return "serve"
    if run.label_studio:
        return "label_studio"
    if run.export and cfg.data.data_dir is None and not run.mtl:
        return "export_only"  # any init, written out: needs no --data-dir
    if run.fine_tune_task and not run.optimize_update_hyperparms_on_val_set:
        return "fine_tune_only"  # needs no --data-dir
    if run.query_dir and not run.fine_tune_task and cfg.data.data_dir is None:
        return "segment_only"
    if run.mtl and cfg.mtl.phase == "pre_train" and cfg.mtl.dataset != "Fewshot":
        return "multiclass_pre_train"  # COCO / COCO-Stuff: no FSS-1000 shards
    if run.mtl:
        return f"mtl_{cfg.mtl.phase}"
    if run.joint_train:
        return "joint_train"
    if run.fine_tune_task:
        return "fine_tune_after_uho"
    if run.run_k_shot_learning_curves_experiment:
        return "k_shot_curves"
    return "meta_train"  # with --pretrained: restore and evaluate, no training


def typed_flags(parser, argv: Sequence[str]) -> list[str]:
    """The flags a command line names, each in its first spelling (--eval-iters for --eval_iters,
    and for an abbreviation argparse accepted).

    Args:
        parser: the argparse parser of the command line.
        argv: the arguments.

    Returns:
        the flags, in the parser's order.
    """
    from args import given_flags

    dests = given_flags(argv)
    return [action.option_strings[0] for action in parser._actions
            if action.option_strings and action.dest in dests]


def foreign_flag(mode: str, flags: Sequence[str]) -> str | None:
    """The refusal of the first flag `mode` does not read, or of a flag it needs and lacks.

    Args:
        mode: a key of MODES.
        flags: the flags given (typed_flags).

    Returns:
        one line naming the flag, the mode and the flag meant, or None when the flags fit.
    """
    row = MODES[mode]
    for flag in flags:
        for group in row.refuses:
            readers, table = FLAG_GROUPS[group]
            if flag in table:
                hint = f"; did you mean {table[flag]}?" if table[flag] else "; drop it."
                return f"{flag} is not read by {row.name} (it belongs to {readers}){hint}"
    for need in row.needs:
        if not any(option in flags for option in need.split("|")):
            what, meaning = NEEDS[need]
            return f"{what} is needed by {row.name}: {meaning}"
    return None


def check_mode_flags(parser, mode: str, argv: Sequence[str] | None = None) -> None:
    """Exit 2 with one line (parser.error) when the command line gives a flag the mode refuses
    or lacks one it needs.

    Args:
        parser: the parser of the command line (args.build_parser()).
        mode: the mode the flags chose.
        argv: the arguments (default sys.argv[1:]).
    """
    problem = foreign_flag(mode, typed_flags(parser, sys.argv[1:] if argv is None else argv))
    if problem:
        parser.error(problem)


# The flags that name files and folders, and where their values are in the Config.
PATH_FLAGS = (
    ("--checkpoint", lambda c: c.run.checkpoint), ("--data-dir", lambda c: c.data.data_dir),
    ("--predictions_dir", lambda c: c.eval.predictions_dir),
    ("--save_fine_tuned_checkpoints_dir", lambda c: c.eval.save_fine_tuned_checkpoints_dir),
    ("--fine-tune-task", lambda c: c.run.fine_tune_task),
    ("--fine-tuned-checkpoint", lambda c: c.run.fine_tuned_checkpoint),
    ("--query_dir", lambda c: c.run.query_dir), ("--masks_dir", lambda c: c.run.masks_dir),
    ("--query_masks", lambda c: c.run.query_masks),
    ("--export", lambda c: c.run.export), ("--serve_dir", lambda c: c.run.serve_dir),
    ("--test_tasks_file", lambda c: c.data.test_tasks_file),
    ("--continue_training_from_checkpoint", lambda c: c.run.continue_training_from_checkpoint),
    ("--restore_efficient_net_weights_from", lambda c: c.model.restore_efficient_net_weights_from),
    ("--baseline_checkpoint", lambda c: c.kshot.baseline_checkpoint),
    ("--init_weights", lambda c: c.mtl.init_weights),
    ("--eval_weights", lambda c: c.mtl.eval_weights), ("--dataset_dir", lambda c: c.mtl.dataset_dir),
    ("--pre_init_weights", lambda c: c.mtl.pre_init_weights),
)
_FIXES = {errno.ENOSPC: "free space on that disk or choose another {flag}, then rerun (a training "
                        "run resumes from its last checkpoint)",
          errno.EDQUOT: "free space (disk quota) or choose another {flag}, then rerun",
          errno.EACCES: "make it writable (or readable) or choose another {flag}",
          errno.EPERM: "make it writable (or readable) or choose another {flag}",
          errno.EROFS: "it is on a read-only file system: choose another {flag}",
          errno.ENOENT: "check {flag}"}


def flag_of_path(cfg, path: str) -> tuple[str, str] | None:
    """The flag whose file or folder holds `path` (the innermost one), with its value.

    Args:
        cfg: the run's args.Config.
        path: a path an error names.

    Returns:
        (flag, value), or None when no flag's path holds it.
    """
    target = os.path.realpath(path)
    best = None
    for flag, value_of in PATH_FLAGS:
        value = value_of(cfg)
        if not value:
            continue
        root = os.path.realpath(value)
        if (target == root or target.startswith(root.rstrip(os.sep) + os.sep)) and \
                (best is None or len(root) > len(os.path.realpath(best[1]))):
            best = (flag, value)
    return best


def os_error_line(cfg, error: OSError) -> str:
    """An OSError as one line: what failed, the path, the flag that chose it, and the fix.

    Args:
        cfg: the run's args.Config.
        error: the error (one raised with a message of its own is returned as it is).

    Returns:
        the line (without the program's prefix).
    """
    if error.errno is None or error.filename is None:
        return str(error)
    path = os.fsdecode(error.filename)
    chosen = flag_of_path(cfg, path)
    where = f" ({chosen[0]} {chosen[1]})" if chosen else ""
    fix = _FIXES.get(error.errno, "check {flag}").format(flag=chosen[0] if chosen else "the path")
    return f"{path}{where}: {error.strerror} [Errno {error.errno}]; {fix}."


if __name__ == "__main__":
    from args import build_parser, parse_args

    check_mode_flags(build_parser(), mode_of(parse_args()))
