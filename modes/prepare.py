"""A run's shared start: check the inputs, seed, read the shards, split, lock the run folder,
write config.json.

Every mode that reads --data-dir starts here, in this order, so a refused input writes nothing
(every check runs before the run folder's lock, the first write) and the same seed draws the
same model initialization and training stream in every mode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import keras
import numpy as np

from adapt import protocol_hsnet
from args import Config
from data.splits import Splits
from data.tasks import FORMATS, ClassData, data_format, load_tasks
from data.tfrecord import read_manifest
from meta.streams import STREAM_TRAINING
from meta.train import held_out_split
from models.config import IMAGENET
from models.restore import imagenet_weights
from modes import mtl, mtl_checks, segment_cli
from modes.restore import check_compatible, pretrained_source, resume_source, \
    with_resumed_task_streams
from modes.setup import RunError, check_class_sizes, make_splits, write_config
from storage import atomic, lock
from storage.export import check_target


@dataclass(frozen=True)
class Run:
    """What the modes share once the inputs are read.

    Attributes:
        cfg: the run config.
        tasks: class name -> ClassData.
        splits: the class splits.
        eval_split: "test", or "val" with --eval_val_tasks.
        eval_names: the classes of the final evaluation.
        out_dir: where this run writes (--checkpoint, or an MTL phase's folder in it).
        rng: the one training stream.
        is_chief: whether this process writes (only the chief of a cluster does).
        started: time.monotonic() at the start of the run.
    """

    cfg: Config
    tasks: Mapping[str, ClassData]
    splits: Splits
    eval_split: str
    eval_names: tuple[str, ...]
    out_dir: str
    rng: np.random.Generator
    is_chief: bool
    started: float


def _check_inputs(cfg: Config) -> None:
    """Refuse what would fail later (data, own-image folder, resume, --pretrained)."""
    if not os.path.isfile(os.path.join(cfg.data.data_dir, "manifest.json")) and \
            os.path.isdir(os.path.join(cfg.data.data_dir, "train", "images")):
        raise RunError(f"--data-dir {cfg.data.data_dir!r} holds the MTL seed's image folders, "
                       f"not shards: convert them first with fss_1000_image_to_tfrecord.py "
                       f"--input_dir {cfg.data.data_dir} --tfrecord_dir SHARDS.")
    if data_format(cfg.data.data_dir) == "metaseg":
        read_manifest(cfg.data.data_dir)  # the data's problems first: a missing or bad folder
    if cfg.run.fine_tune_task:
        segment_cli.check_before_training(cfg)  # a bad folder fails before training
    if cfg.model.restore_efficient_net_weights_from == IMAGENET and \
            cfg.model.model_name == "efficientlab":
        imagenet_weights(cfg.model.feature_extractor_name)  # fetched before the data is read
    if not (cfg.run.pretrained or cfg.run.mtl or cfg.run.joint_train):
        source = resume_source(cfg)
        if source is not None:  # a refused resume leaves the run's config.json as it was
            check_compatible(source, cfg, resume=True)
    if cfg.run.pretrained:  # an init that cannot be evaluated leaves the folder as it was
        pretrained_source(cfg)


def _check_outputs(cfg: Config) -> None:
    """The output folders other than --checkpoint, checked writable before the work starts."""
    if cfg.eval.predictions_dir:
        atomic.check_writable(cfg.eval.predictions_dir, "--predictions_dir")
    if cfg.eval.save_fine_tuned_checkpoints or cfg.eval.save_fine_tuned_checkpoints_train:
        if cfg.eval.save_fine_tuned_checkpoints_dir:
            atomic.check_writable(cfg.eval.save_fine_tuned_checkpoints_dir,
                                  "--save_fine_tuned_checkpoints_dir")
    if cfg.run.export:  # a file or folder of the user's there is refused too
        check_target(cfg.run.export, cfg.run.export_format, "--export")


def prepare(cfg: Config, *, is_chief: bool, started: float) -> Run:
    """Check the inputs, seed, read and split the classes, write config.json (chief only).

    Args:
        cfg: the run config.
        is_chief: whether this process writes into --checkpoint.
        started: time.monotonic() at the start of the run.

    Returns:
        the Run (its cfg keeps a resumed checkpoint's task streams).
    """
    cfg = with_resumed_task_streams(cfg)
    _check_inputs(cfg)
    run_dir = cfg.run.checkpoint
    out_dir = run_dir if not os.path.isfile(run_dir) else os.path.dirname(os.path.abspath(run_dir))
    if cfg.run.mtl:  # meta-transfer learning writes each phase into <checkpoint>/<phase>
        out_dir = mtl.phase_dir(cfg)
    keras.utils.set_random_seed(cfg.meta.seed)
    rng = np.random.default_rng([cfg.meta.seed, STREAM_TRAINING])
    print(f"Reading --data-dir {cfg.data.data_dir} as "
          f"{FORMATS[data_format(cfg.data.data_dir)]}", flush=True)
    tasks = load_tasks(cfg.data.data_dir, cfg.data.image_size, fp_k=cfg.data.fp_k_test_set)
    splits = make_splits(cfg, sorted(tasks))
    eval_split = "val" if cfg.eval.eval_val_tasks else "test"
    eval_names = splits.val if cfg.eval.eval_val_tasks else splits.test
    print(f"Classes: {len(splits.train)} meta-train, {len(splits.val)} meta-val, "
          f"{len(splits.test)} meta-test. Final evaluation on the {eval_split} split "
          f"({len(eval_names)} classes); monitoring on {held_out_split(splits)[0]}.", flush=True)
    if cfg.run.mtl:  # MTL draws its own episode sizes (--shot, --*_query)
        mtl_checks.check_phase(cfg, splits, eval_names, out_dir)
    else:
        if cfg.eval.protocol == protocol_hsnet.PROTOCOL:
            protocol_hsnet.check_classes(tasks, eval_names, cfg.eval.shots)
        check_class_sizes(cfg, tasks, splits, eval_names)
    if is_chief:  # only the chief of a cluster writes, after every check
        _check_outputs(cfg)
        lock.hold(out_dir, "--checkpoint")
        write_config(out_dir, cfg)
    return Run(cfg=cfg, tasks=tasks, splits=splits, eval_split=eval_split,
               eval_names=tuple(eval_names), out_dir=out_dir, rng=rng, is_chief=is_chief,
               started=started)
