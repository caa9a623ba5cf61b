"""Which mode the flags of run_metasegnet.py choose, the flags of another mode it refuses, and
which flag chose a path an OS error names.

The meta-learning modes (Reptile / FOMAML training, --pretrained, --joint_train,
--fine-tune-task) and the meta-transfer-learning phases (--phase) each have flags the other
never reads, often for the same idea under another name (`--shot` and `--shots`). A flag given
to a mode that ignores it would change nothing while the output looked as if it had, so it is
refused. The tables are data: a new mode adds a row to REFUSED naming the flag groups it
refuses, a new group of mode-specific flags a row to FLAG_GROUPS.

    python mode_flags.py FLAGS...   # exit 0, or 2 with the line run_metasegnet.py would print

checks a command line as run_metasegnet.py does before it starts (run.sh, before it deletes the
demo's old runs), without importing TensorFlow.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Sequence

# MTL-Segmentation's flags, read by the --phase modes only -> the meta-learning modes' flag for
# the same idea (None: no counterpart).
MTL_FLAGS = {
    "--shot": "--shots", "--teshot": "--shots", "--way": None, "--train_query": None,
    "--val_query": None, "--test_query": None, "--update_step": "--eval-iters",
    "--base_lr": "--learning-rate", "--meta_lr1": "--meta-step", "--meta_lr2": "--meta-step",
    "--max_epoch": "--meta-iters", "--num_batch": "--meta-iters", "--step_size": None,
    "--gamma": None, "--init_weights": "--checkpoint", "--eval_weights": "--checkpoint",
    "--pre_max_epoch": "--joint_train_epochs", "--pre_batch_size": "--inner-batch",
    "--pre_lr": "--learning-rate", "--pre_gamma": None, "--pre_step_size": None,
    "--pre_custom_weight_decay": None, "--pre_custom_momentum": None, "--dataset": None,
    "--dataset_dir": None, "--num_classes": None, "--pre_init_weights": None,
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
# Groups of flags: name -> (who reads them, {flag: the flag meant elsewhere, or None}).
FLAG_GROUPS = {"mtl": ("the --phase (MTL) modes", MTL_FLAGS),
               "meta_learning": ("meta-learning runs", META_LEARNING_FLAGS)}
# mode (run_metasegnet.MODES) -> (how messages name it, the groups of flags it refuses). A mode
# missing here refuses nothing.
REFUSED = {
    "meta_train": ("meta-learning runs (no --phase)", ("mtl",)),
    "joint_train": ("--joint_train", ("mtl",)),
    "fine_tune_only": ("--fine-tune-task", ("mtl",)),
    "serve": ("--serve", ("mtl",)),
    "export_only": ("--export", ("mtl",)),
    "mtl_pre_train": ("--phase runs", ("meta_learning",)),
    "mtl_meta_train": ("--phase runs", ("meta_learning",)),
    "mtl_meta_eval": ("--phase runs", ("meta_learning",)),
    "multiclass_pre_train": ("--phase runs", ("meta_learning",)),
}


def mode_of(cfg) -> str:
    """Which of run_metasegnet.MODES the flags ask for.

    Args:
        cfg: the parsed args.Config.

    Returns:
        the mode's name.
    """
    if cfg.run.serve:
        return "serve"
    if cfg.run.export and cfg.data.data_dir is None and not cfg.run.mtl:
        return "export_only"  # any init, written out: needs no --data-dir
    if cfg.run.fine_tune_task and not cfg.run.optimize_update_hyperparms_on_val_set:
        return "fine_tune_only"  # needs no --data-dir
    if cfg.run.mtl and cfg.mtl.phase == "pre_train" and cfg.mtl.dataset != "Fewshot":
        return "multiclass_pre_train"  # COCO / COCO-Stuff: no FSS-1000 shards
    if cfg.run.mtl:
        return f"mtl_{cfg.mtl.phase}"
    if cfg.run.joint_train:
        return "joint_train"
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
    """The refusal of the first flag `mode` does not read, or None.

    Args:
        mode: a key of run_metasegnet.MODES.
        flags: the flags given (typed_flags).

    Returns:
        one line naming the flag, the mode and the flag meant, or None when every flag is read.
    """
    name, groups = REFUSED.get(mode, (mode, ()))
    for flag in flags:
        for group in groups:
            readers, table = FLAG_GROUPS[group]
            if flag in table:
                hint = f"; did you mean {table[flag]}?" if table[flag] else "; drop it."
                return f"{flag} is not read by {name} (it belongs to {readers}){hint}"
    return None


def check_mode_flags(parser, mode: str, argv: Sequence[str] | None = None) -> None:
    """Exit 2 with one line (parser.error) when the command line gives a flag of another mode.

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
