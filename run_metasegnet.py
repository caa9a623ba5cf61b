"""Meta-train an initialization for few-shot segmentation, then evaluate it on held-out classes.

    python run_metasegnet.py --data-dir SHARDS --checkpoint RUN_DIR [flags of the paper's CLI]

The flags choose one mode (`mode_flags.MODES`, one row each: the flags it reads, refuses and
needs, and its function below). Rerunning the same command resumes from the newest
checkpoint in --checkpoint; --pretrained evaluates it without training. Outputs in --checkpoint:
config.json, ckpt-<step>/ + LAST, training_log.csv, tensorboard/, training_curves.png,
meta-test_results.json (and LOCK while the run works), and on stdout the line
`Mean IoU over all meta-test tasks: X`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from functools import partial

from devices.quiet import quiet_tensorflow

if __name__ == "__main__":  # TensorFlow logs its start-up lines on import, before flags are parsed
    quiet_tensorflow(verbose="--verbose" in sys.argv[1:])

import keras  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
import numpy as np  # noqa: E402

from adapt.evaluate import monitor  # noqa: E402
from args import Config, build_parser, parse_args  # noqa: E402
from data.splits import Splits  # noqa: E402
from errors import TrainingError, UserError  # noqa: E402
from devices.cluster import Interrupted, stop_on_sigterm  # noqa: E402
from devices.distribute import DistributedMetaLearner, Replicas, configure_devices, \
    make_strategy  # noqa: E402
from devices.precision import set_precision  # noqa: E402
from meta.algorithms import MetaLearner  # noqa: E402
from meta.inner import InnerLoop  # noqa: E402
from meta.streams import STREAM_TRAINING  # noqa: E402
from meta.train import held_out_split, meta_train as meta_train_loop  # noqa: E402
from mode_flags import MODES, check_mode_flags, mode_of, os_error_line  # noqa: E402
from models.build import build_model  # noqa: E402
from modes import experiments, mtl, mtl_checks, segment_cli  # noqa: E402
from modes.final_eval import evaluate_init  # noqa: E402
from modes.prepare import prepare  # noqa: E402
from modes.restore import restore  # noqa: E402
from modes.setup import write_config  # noqa: E402
from report.logs import CSV_NAME, PLOT_NAME, plot_training_curves  # noqa: E402
from segmenter import build  # noqa: E402
from storage import atomic, lock  # noqa: E402
from storage.tf1_checkpoint import restore_backbone  # noqa: E402

LABEL_STUDIO_PORT = 9090  # the port Label Studio's ML backends listen on by convention


def serve(cfg: Config, strategy, started: float) -> int:
    """--serve --checkpoint INIT: the page where a person paints examples and segments images;
    SIGTERM ends it with status 0, Ctrl-C with 130."""
    from serve.server import check_port, keep_files_in, launch  # Gradio: the page only
    check_port(cfg.run.host, cfg.run.port)  # before the model: a taken port costs nothing
    init, settings = segment_cli.load_init(cfg)
    atomic.check_writable(cfg.run.serve_dir, "--serve_dir")
    keep_files_in(cfg.run.serve_dir)
    seg = build(init, settings)
    print(f"Serving the page on http://{cfg.run.host}:{cfg.run.port} (outputs in "
          f"{os.path.abspath(cfg.run.serve_dir)}, an idle session's files kept "
          f"{cfg.run.serve_keep_hours:g} h); Ctrl-C stops it", flush=True)
    return launch(seg, host=cfg.run.host, port=cfg.run.port, out_dir=cfg.run.serve_dir,
                  keep_hours=cfg.run.serve_keep_hours)


def label_studio(cfg: Config, strategy, started: float) -> int:
    """--label_studio --checkpoint INIT: Label Studio's ML backend (docs/labeling.md)."""
    from serve.label_studio import launch  # FastAPI is imported only for the backend
    from serve.server import check_port
    port = cfg.run.port if "port" in cfg.run.given_flags else LABEL_STUDIO_PORT
    check_port(cfg.run.host, port)  # before the model: a taken port costs nothing
    seg = build(*segment_cli.load_init(cfg))
    print(f"Label Studio ML backend on http://{cfg.run.host}:{port}: connect it in Label "
          f"Studio (project Settings > Model); Ctrl-C stops it", flush=True)
    launch(seg, host=cfg.run.host, port=port)
    return 0


def export_only(cfg: Config, strategy, started: float) -> int:
    """--export DIR --checkpoint INIT (no --data-dir): any init the tool loads, written out."""
    from storage.export import check_target
    init, settings = segment_cli.load_init(cfg)
    check_target(cfg.run.export, cfg.run.export_format, "--export")  # before the model
    _export(cfg, build(init, settings).model)
    return 0


def fine_tune_only(cfg: Config, strategy, started: float) -> int:
    """--fine-tune-task DIR --checkpoint INIT: the init's own settings; typed flags override."""
    return segment_cli.fine_tune_only(cfg)


def segment_only(cfg: Config, strategy, started: float) -> int:
    """--checkpoint WEIGHTS --query_dir TREE --masks_dir OUT: adapted weights segment a folder."""
    return segment_cli.segment_only(cfg)


def multiclass_pre_train(cfg: Config, strategy, started: float) -> int:
    """MTL pre-training on COCO / COCO-Stuff: needs no FSS-1000 shards."""
    out_dir = mtl.phase_dir(cfg)
    data = mtl.load_multiclass_data(cfg)  # the data and a resume are checked before any write
    mtl_checks.check_phase(cfg, Splits((), (), ()), (), out_dir)
    lock.hold(out_dir, "--checkpoint")
    write_config(out_dir, cfg)
    keras.utils.set_random_seed(cfg.meta.seed)
    rng = np.random.default_rng([cfg.meta.seed, STREAM_TRAINING])
    return mtl.pre_train_multiclass_phase(cfg, out_dir, rng, data)


def mtl_pre_train(cfg: Config, strategy, started: float) -> int:
    """MTL phase pre_train: the plain U-Net on the pooled meta-train classes."""
    run = prepare(cfg, is_chief=_is_chief(strategy), started=started)
    return mtl.pre_train_phase(cfg, run.tasks, run.splits, run.out_dir, run.rng)


def mtl_meta_train(cfg: Config, strategy, started: float) -> int:
    """MTL phase meta_train: scale/shift and the head's init, base kernels frozen."""
    run = prepare(cfg, is_chief=_is_chief(strategy), started=started)
    return mtl.meta_train_phase(cfg, run.tasks, run.splits, run.out_dir, run.rng)


def mtl_meta_eval(cfg: Config, strategy, started: float) -> int:
    """MTL phase meta_eval: the final evaluation with the MTL head adaptation."""
    run = prepare(cfg, is_chief=_is_chief(strategy), started=started)
    cfg, model, loop, tasks_done = mtl.meta_eval_setup(cfg, run.splits, run.eval_names,
                                                       run.eval_split)
    run = dataclasses.replace(run, cfg=cfg)
    initial_weights = _initial_weights(cfg, model)
    _export(cfg, model)
    return evaluate_init(run, loop, None, start_step=tasks_done, initial_weights=initial_weights)


def joint_train(cfg: Config, strategy, started: float) -> int:
    """--joint_train: supervised training on the pooled train classes, [UHO], the evaluation."""
    run = prepare(cfg, is_chief=_is_chief(strategy), started=started)
    loop, learner = _build_learner(cfg, strategy)
    initial_weights = _initial_weights(cfg, loop.model)
    _export(cfg, loop.model)
    experiments.joint_train_step(cfg, loop, run.tasks, run.splits, run.out_dir)
    uho = experiments.uho_step(run, loop, _replicas(learner))
    return evaluate_init(run, loop, uho, start_step=0, replicas=_replicas(learner),
                         initial_weights=initial_weights)


def meta_train(cfg: Config, strategy, started: float) -> int:
    """Meta-train (or resume) with Reptile / FOMAML / FOMAML*, or restore --checkpoint's init
    (--pretrained); [UHO]; the final evaluation."""
    run, loop, learner, start_step, initial_weights = _meta_learned(cfg, strategy, started)
    uho = experiments.uho_step(run, loop, _replicas(learner))
    return evaluate_init(run, loop, uho, start_step=start_step, replicas=_replicas(learner),
                         initial_weights=initial_weights)


def k_shot_curves(cfg: Config, strategy, started: float) -> int:
    """Meta-train or restore as meta_train; [UHO]; the k-shot learning curves."""
    run, loop, learner, _, _ = _meta_learned(cfg, strategy, started)
    uho = experiments.uho_step(run, loop, _replicas(learner))
    experiments.k_shot_step(cfg, loop, run.tasks, run.eval_names, run.out_dir, uho)
    return 0


def fine_tune_after_uho(cfg: Config, strategy, started: float) -> int:
    """Meta-train or restore as meta_train; UHO; --fine-tune-task with UHO's adaptation."""
    run, loop, learner, _, _ = _meta_learned(cfg, strategy, started)
    uho = experiments.uho_step(run, loop, _replicas(learner))
    segment_cli.fine_tune_after_uho(cfg, loop, uho)
    return 0


# ------------------------------------------------------------------- the modes' shared steps
def _meta_learned(cfg: Config, strategy, started: float):
    """The shared start of the meta-learning modes: the run's data, its learner, the init
    restored (--pretrained) or meta-trained (resumed), its training curves.

    Returns:
        (run, loop, learner, completed meta-iterations, the weights before training or None).
    """
    run = prepare(cfg, is_chief=_is_chief(strategy), started=started)
    cfg = run.cfg  # a resumed run keeps its checkpoint's task streams
    loop, learner = _build_learner(cfg, strategy)
    initial_weights = _initial_weights(cfg, loop.model)
    start_step = restore(cfg, loop.model, learner, run.rng)
    _export(cfg, loop.model)
    if not cfg.run.pretrained and start_step < cfg.meta.meta_iters:
        watch = partial(monitor, learner, run.tasks, run.splits, meta=cfg.meta,
                        evaluation=cfg.eval, adaptation=cfg.adapt)
        meta_train_loop(learner, run.tasks, run.splits, meta=cfg.meta, monitor=watch,
                        rng=run.rng, run_dir=run.out_dir, config_json=cfg.to_json(),
                        checkpoint_groups=learner.checkpoint_groups(), start_step=start_step)
    if run.is_chief and os.path.isfile(os.path.join(run.out_dir, CSV_NAME)):
        plot_training_curves(os.path.join(run.out_dir, CSV_NAME),
                             os.path.join(run.out_dir, PLOT_NAME),
                             val_label=held_out_split(run.splits)[0])
    return run, loop, learner, start_step, initial_weights


def _build_learner(cfg: Config, strategy) -> tuple[InnerLoop, MetaLearner]:
    """The flags' model and inner loop, and the meta-learner (on replicas with --distribute)."""
    loop = experiments.make_inner_loop(cfg, _run_model(cfg))
    if strategy is None:
        return loop, MetaLearner(loop, cfg.meta)
    replicas = Replicas(strategy, loop, lambda: experiments.make_inner_loop(cfg, _run_model(cfg)))
    print(f"Distributed over {replicas.num_replicas} replicas "
          f"({len(replicas.devices)} on this worker)", flush=True)
    return loop, DistributedMetaLearner(replicas, cfg.meta)


def _run_model(cfg: Config):
    """The flags' model, its encoder restored from --restore_efficient_net_weights_from."""
    model = build_model(cfg.model)
    restore_backbone(model, cfg.model)
    return model


def _replicas(learner):
    """The replicas a distributed learner spreads evaluations over (None on one device)."""
    return getattr(learner, "replicas", None)


def _is_chief(strategy) -> bool:
    return strategy is None or bool(strategy.extended.should_checkpoint)


def _initial_weights(cfg: Config, model) -> list | None:
    """The weights before any training or restore, kept for --compare_random_init."""
    return [v.numpy() for v in model.variables] if cfg.run.compare_random_init else None


def _export(cfg: Config, model) -> None:
    if cfg.run.export:
        from storage.export import export
        path = export(model, cfg.run.export, cfg.run.export_format, "--export")
        print(f"Exported the model ({cfg.run.export_format}) to {path}", flush=True)


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a test may have replaced it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def show_library_logs() -> None:
    """The library's progress lines (absl INFO) on stdout, as plain lines."""
    logger = absl_logging.get_absl_logger()
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    # Printed once, here: absl would otherwise give the root logger a stderr handler as well.
    logger.propagate = False
    absl_logging.set_verbosity(absl_logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    cfg = parse_args(argv)
    check_mode_flags(build_parser(), mode_of(cfg), argv)
    show_library_logs()
    previous = stop_on_sigterm()  # SIGTERM ends a run like Ctrl-C: one line, its lock released
    try:
        started = time.monotonic()
        # Devices, the cluster and the dtype policy come before TensorFlow runs its first op.
        configure_devices(cfg.device.distribute, cfg.device.num_replicas)
        strategy = make_strategy(cfg.device.distribute, cfg.device.num_replicas,
                                 cfg.device.worker_start_timeout)
        set_precision(cfg.device.mixed_precision)
        return globals()[MODES[mode_of(cfg)].function](cfg, strategy, started)
    except OSError as e:
        print(f"run_metasegnet.py: error: {os_error_line(cfg, e)}", file=sys.stderr, flush=True)
        return 2
    except TrainingError as e:  # the inputs were fine: not a usage error
        print(f"run_metasegnet.py: training failed: {e}", file=sys.stderr, flush=True)
        return 1
    except (UserError, ValueError) as e:
        print(f"run_metasegnet.py: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as e:
        name = str(e) if isinstance(e, Interrupted) else "SIGINT"
        print(f"run_metasegnet.py: stopped by {name} (the checkpoints written so far are kept; "
              f"rerun the command to resume)", file=sys.stderr, flush=True)
        return 130 if name == "SIGINT" else 143
    finally:
        lock.release_all()
        if previous is not None:
            stop_on_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
