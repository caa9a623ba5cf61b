"""Check a command line against its data without running it or writing anything: what run.sh
does for every line of its demo before it deletes the previous demo's runs.

    python -m modes.precheck FLAGS...   # exit 0, or 2 with the line run_metasegnet.py would print

First the flags (as `python mode_flags.py` checks them), then, for a mode that reads FSS-1000
shards, the data as `modes.prepare` reads it: the shards' format and manifest, --image_size
against the size they were converted at (the shards are decoded), the split into classes, and
the class sizes the episodes need. Inputs an earlier line of the same script makes (a run's
checkpoints, an MTL phase's weights) are not checked here: they do not exist yet.
"""
from __future__ import annotations

import sys

from devices.quiet import quiet_tensorflow

if __name__ == "__main__":  # TensorFlow logs its start-up lines on import
    quiet_tensorflow(verbose=False)

from adapt import protocol_hsnet  # noqa: E402
from args import Config, build_parser, parse_args  # noqa: E402
from data.tasks import data_format, load_tasks  # noqa: E402
from data.tfrecord import read_manifest  # noqa: E402
from errors import UserError  # noqa: E402
from mode_flags import MODES, check_mode_flags, mode_of  # noqa: E402
from modes.setup import check_class_sizes, make_splits  # noqa: E402


def check_data(cfg: Config) -> None:
    """Refuse data the run would refuse: unreadable shards, another image size, a split without
    classes to train or test, classes too small for the episodes.

    Args:
        cfg: the parsed command line (a mode that reads --data-dir).

    Raises:
        UserError, ValueError, OSError: the one-line reason, as run_metasegnet.py gives it.
    """
    if data_format(cfg.data.data_dir) == "metaseg":
        read_manifest(cfg.data.data_dir)
    tasks = load_tasks(cfg.data.data_dir, cfg.data.image_size, fp_k=cfg.data.fp_k_test_set)
    splits = make_splits(cfg, sorted(tasks))
    eval_names = splits.val if cfg.eval.eval_val_tasks else splits.test
    if cfg.run.mtl:  # MTL's episode sizes are checked as it draws them
        return
    if cfg.eval.protocol == protocol_hsnet.PROTOCOL:
        protocol_hsnet.check_classes(tasks, eval_names, cfg.eval.shots)
    check_class_sizes(cfg, tasks, splits, eval_names)


def main(argv: list[str] | None = None) -> int:
    """Check the command line and its data; returns the exit status (0, or 2 with one line)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    mode = mode_of(cfg)
    check_mode_flags(build_parser(), mode, argv)
    if "shards" not in MODES[mode].reads or not cfg.data.data_dir:
        return 0
    try:
        check_data(cfg)
    except (UserError, ValueError, OSError) as e:
        print(f"run_metasegnet.py: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
