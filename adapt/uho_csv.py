"""The UHO results file: one row per measured (configuration, repetition, task), appended at once.

Rows are flushed as they are measured, so a crash loses at most the task in flight and a rerun
with the same file resumes where the last one stopped (adapt/uho.py reads the rows back).

Columns (`COLUMNS`):
* `round`, `config`: which GP round (`--uho_outer_iters`) and which configuration within it;
* `kind`: `early_stopping` (steps = the task's best step count, IoU = its best query IoU) or
  `median_steps` (`--eval_tasks_with_median_early_stopping_iterations`: steps = the
  configuration's median, IoU = the re-evaluated query IoU at that count);
* `repetition`, `task`, `best_num_steps`, `mIoU`;
* the four update hyperparameters actually applied: `lr`, `drop_rate`, `aug_rate`,
  `inner_batch_size` (floats written with repr, so they read back bit-exactly).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from storage import atomic

COLUMNS = ("round", "config", "kind", "repetition", "task", "best_num_steps", "mIoU", "lr",
           "drop_rate", "aug_rate", "inner_batch_size")
KINDS = ("early_stopping", "median_steps")


@dataclass(frozen=True)
class UHORow:
    """One measured (configuration, repetition, task)."""

    round: int
    config: int
    kind: str
    repetition: int
    task: str
    best_num_steps: int
    iou: float
    lr: float
    drop_rate: float
    aug_rate: float
    inner_batch_size: int


def results_csv_path(checkpoint_dir: str, csv_name: str, shots: int) -> str:
    """`<checkpoint>/<stem>_<shots>-shot<ext>`, the reference's naming (ml4ai/mliis
    meta_learners/hyperparam_search.py).

    Args:
        checkpoint_dir: the run's checkpoint directory.
        csv_name: `--uho_results_csv_name`.
        shots: support shots of the evaluation.

    Returns:
        The path of the results file.
    """
    stem, ext = os.path.splitext(os.path.basename(csv_name))
    return os.path.join(checkpoint_dir, f"{stem}_{shots}-shot{ext or '.csv'}")


def read_rows(path: str) -> list[UHORow]:
    """Rows of an existing results file, in the order they were written; [] if it does not exist.

    Args:
        path: the results CSV.

    Returns:
        list of UHORow.

    Raises:
        ValueError: the file has other columns (another tool's or an older format), or a row does
            not parse; the message names the file and line.
    """
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        if tuple(header) != COLUMNS:
            raise ValueError(f"UHO results file {path!r} has columns {header}, expected "
                             f"{list(COLUMNS)}. Move it away or pass another --uho_results_csv_name.")
        for line_no, values in enumerate(reader, start=2):
            if not values:
                continue
            try:
                if len(values) != len(COLUMNS):
                    raise ValueError(f"{len(values)} fields")
                v = dict(zip(COLUMNS, values))
                if v["kind"] not in KINDS:
                    raise ValueError(f"kind {v['kind']!r}")
                rows.append(UHORow(round=int(v["round"]), config=int(v["config"]), kind=v["kind"],
                                   repetition=int(v["repetition"]), task=v["task"],
                                   best_num_steps=int(v["best_num_steps"]), iou=float(v["mIoU"]),
                                   lr=float(v["lr"]), drop_rate=float(v["drop_rate"]),
                                   aug_rate=float(v["aug_rate"]),
                                   inner_batch_size=int(v["inner_batch_size"])))
            except ValueError as e:
                # A crash can cut the last line short; anything else is a foreign edit.
                raise ValueError(f"UHO results file {path!r} line {line_no} does not parse ({e}). "
                                 f"Delete that line to resume, or move the file away.") from e
    return rows


def append_row(path: str, row: UHORow) -> None:
    """Append one row (writing the header first if the file is new) and flush it to disk.

    Args:
        path: the results CSV.
        row: the measurement.
    """
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.naming(path), open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(COLUMNS)
        writer.writerow([row.round, row.config, row.kind, row.repetition, row.task,
                         row.best_num_steps, repr(float(row.iou)), repr(float(row.lr)),
                         repr(float(row.drop_rate)), repr(float(row.aug_rate)),
                         int(row.inner_batch_size)])
        f.flush()
        os.fsync(f.fileno())
