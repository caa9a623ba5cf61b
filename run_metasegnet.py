"""Meta-train an initialization for few-shot segmentation, then evaluate it on held-out classes.

    python run_metasegnet.py --data-dir SHARDS --checkpoint RUN_DIR [flags of the paper's CLI]

Sections: setup, data, model, restore, loop, final evaluation. Rerunning the same command
resumes from the newest checkpoint in --checkpoint; --pretrained evaluates it without training.
Outputs in --checkpoint: config.json, ckpt-<step>/ + LAST, training_log.csv, tensorboard/,
training_curves.png, meta-test_results.json, and on stdout the line
`Mean IoU over all meta-test tasks: X`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from adapt import protocol_hsnet  # noqa: E402
from adapt.evaluate import STREAM_TEST, STREAM_TRAIN, EvalResult, evaluate  # noqa: E402
from adapt.uho_objective import dropout_rate  # noqa: E402
from args import Config, parse_args  # noqa: E402
from data.errors import UserError  # noqa: E402
from data.splits import Splits, resolve_class_names, split_classes  # noqa: E402
from data.tasks import FORMATS, data_format, load_tasks, recorded_split  # noqa: E402
from devices.distribute import DistributedMetaLearner, Replicas, configure_devices, \
    make_strategy  # noqa: E402
from devices.precision import set_precision  # noqa: E402
from meta.algorithms import MetaLearner  # noqa: E402
from meta.inner import InnerLoop, evaluation_schedule, training_schedule  # noqa: E402
from meta.train import held_out_split, meta_train  # noqa: E402
import modes.experiments as experiments  # noqa: E402
import modes.mtl  # noqa: E402
from storage import checkpoint  # noqa: E402
from storage import tf1_checkpoint  # noqa: E402
from storage.logs import CSV_NAME, PLOT_NAME, plot_training_curves  # noqa: E402
from storage.progress import Progress, format_seconds  # noqa: E402
from storage.tf1_checkpoint import build_model_with_backbone  # noqa: E402

RESULTS_NAME = "meta-test_results.json"
EVAL_CONFIG_NAME = "pretrained_eval_config.json"
FSS_TEST_LIST = "fss_test_set.txt"
FP_K_TEST_CLASSES = ("airliner", "bus", "motorbike", "potted_plant", "television")
# Fields whose change makes a checkpoint's weights meaningless for this model.
MODEL_STRUCTURE = ("model_name", "image_size", "feature_extractor_name", "rsd",
                   "spatial_pyramid_pooling", "skip_decoding", "disable_rsd_residual_connections",
                   "n_unet_encoding_stacks", "start_num_feature_maps_power")
# Settings a resumed meta-training run may change without breaking the trajectory's meaning.
RESUME_MAY_CHANGE = ("meta.meta_iters", "meta.eval_interval", "meta.monitor_tasks",
                     "meta.keep_checkpoints", "model.restore_efficient_net_weights_from")


class RunError(UserError):
    """A problem with the run's inputs; reported as one message, exit status 2."""


# ---------------------------------------------------------------------------------- setup
def _write_config(run_dir: str, cfg: Config) -> None:
    os.makedirs(run_dir, exist_ok=True)
    # An evaluation of an existing checkpoint keeps the training run's config.json intact.
    path = os.path.join(run_dir, EVAL_CONFIG_NAME if cfg.run.pretrained else "config.json")
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(cfg.to_json())
    os.replace(f"{path}.tmp", path)
    print(f"Resolved config written to {path}", flush=True)


def _write_atomic(path: str, text: str) -> None:
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def write_results(out_dir: str, results: dict) -> str:
    """Write this evaluation's results; earlier evaluations' results are kept.

    The newest is always `meta-test_results.json` (what tools read); every evaluation also has
    its own `meta-test_results-<n>.json`. A `meta-test_results.json` with no numbered copy (from
    an older version) gets one before it is replaced.

    Args:
        out_dir: the run directory.
        results: JSON-serializable results.

    Returns:
        path of meta-test_results.json.
    """
    stem, ext = os.path.splitext(RESULTS_NAME)
    numbered = {}
    for entry in os.listdir(out_dir):
        m = re.fullmatch(rf"{re.escape(stem)}-(\d+){re.escape(ext)}", entry)
        if m:
            numbered[int(m.group(1))] = os.path.join(out_dir, entry)
    path = os.path.join(out_dir, RESULTS_NAME)
    next_n = max(numbered, default=0) + 1
    if os.path.isfile(path):
        with open(path, "rb") as f:
            current = f.read()
        if not any(open(p, "rb").read() == current for p in numbered.values()):
            _write_atomic(os.path.join(out_dir, f"{stem}-{next_n}{ext}"),
                          current.decode("utf-8", "replace"))
            next_n += 1
    text = json.dumps(results, indent=1)
    _write_atomic(os.path.join(out_dir, f"{stem}-{next_n}{ext}"), text)
    _write_atomic(path, text)
    return path


# ----------------------------------------------------------------------------------- data
def _test_classes_file(cfg: Config) -> str | None:
    if cfg.data.test_tasks_file or not cfg.data.fss_1000:
        return cfg.data.test_tasks_file
    # --fss_1000 without a list: FSS-1000's own 240 test classes, shipped next to the shards.
    for candidate in (os.path.join(cfg.data.data_dir, FSS_TEST_LIST),
                      os.path.join(os.path.dirname(os.path.abspath(cfg.data.data_dir)),
                                   FSS_TEST_LIST)):
        if os.path.isfile(candidate):
            return candidate
    raise RunError(f"--fss_1000 evaluates FSS-1000's 240 test classes, but no {FSS_TEST_LIST} was "
                   f"found in or next to --data-dir {cfg.data.data_dir!r}. Pass --test_tasks_file "
                   f"path/to/{FSS_TEST_LIST}.")


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
                       "--fss_1000 (with fss_test_set.txt next to the shards).")
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


# ---------------------------------------------------------------------------------- restore
def _checkpoint_groups(model, learner: MetaLearner) -> dict[str, list]:
    return {"model": list(model.variables),
            "inner_optimizer": list(learner.loop.optimizer.variables),
            "outer_optimizer": list(learner.outer_optimizer.variables)}


def _check_compatible(path: str, cfg: Config, *, resume: bool) -> None:
    saved = checkpoint.read_config(path)
    current = json.loads(cfg.to_json())
    problems = checkpoint.config_differences(
        {"model": {k: saved.get("model", {}).get(k) for k in MODEL_STRUCTURE}},
        {"model": {k: current["model"].get(k) for k in MODEL_STRUCTURE}}, ["model"])
    if resume:
        # Runs from before --augmentation used metaseg's; without --augment the choice is moot.
        saved.get("inner", {}).setdefault("augmentation", "metaseg")
        moot = () if cfg.inner.augment else ("inner.augmentation",)
        problems += checkpoint.config_differences(saved, current, ["loss", "inner", "meta"],
                                                  ignore=RESUME_MAY_CHANGE + moot)
        problems += checkpoint.config_differences(
            {"data": {k: saved.get("data", {}).get(k) for k in ("test_tasks_file", "num_test_tasks",
                                                              "num_val_tasks", "seed")}},
            {"data": {k: current["data"].get(k) for k in ("test_tasks_file", "num_test_tasks",
                                                        "num_val_tasks", "seed")}}, ["data"])
    if problems:
        what = "resume meta-training from" if resume else "load"
        raise RunError(f"Cannot {what} checkpoint {path}: its config differs from this run's:\n  "
                       + "\n  ".join(problems)
                       + "\nRerun with the checkpoint's flags (its config.json) or use a fresh "
                         "--checkpoint directory.")


def resume_source(cfg: Config) -> str | None:
    """The metaseg checkpoint meta-training resumes from (None for a fresh run).

    A TF1 checkpoint given as --continue_training_from_checkpoint is not resumed from: `restore`
    loads its weights into a fresh run, and once that run has written checkpoints of its own, a
    rerun resumes those.

    Args:
        cfg: the run config.

    Returns:
        a checkpoint folder, or None.
    """
    source, run_dir = cfg.run.continue_training_from_checkpoint, cfg.run.checkpoint
    own = run_dir if os.path.isdir(run_dir) and checkpoint.latest_checkpoint(run_dir) else None
    if source is None or tf1_checkpoint.is_tf1_checkpoint(source):
        source = own  # rerunning the same command resumes where it stopped
    if source is None:
        return None
    path = checkpoint.latest_checkpoint(source) if os.path.isdir(source) and not \
        os.path.isfile(os.path.join(source, "state.json")) else source
    if path is None or not os.path.isfile(os.path.join(path, "state.json")):
        raise RunError(f"--continue_training_from_checkpoint {source!r} holds no metaseg "
                       f"checkpoint (no {checkpoint.LAST} pointer or state.json) and no TF1 "
                       f"checkpoint.")
    return path


def restore(cfg: Config, model, learner: MetaLearner, rng: np.random.Generator) -> int:
    """Load what the flags ask for; return the completed meta-iterations to start from.

    Args:
        cfg: the run config.
        model: the built model.
        learner: the meta-learner (inner and outer optimizers).
        rng: the training generator (its state is restored when resuming).

    Returns:
        completed meta-iterations (0 for a fresh run).
    """
    run_dir = cfg.run.checkpoint
    # The head dropout rate is a model variable, but the flags decide it (--final_layer_dropout_rate).
    skip = ("final_dropout/rate",) + (
        ("final_layer_weights",) if cfg.run.do_not_restore_final_layer_weights else ())
    if cfg.run.pretrained:
        if tf1_checkpoint.is_tf1_checkpoint(run_dir):
            report = tf1_checkpoint.restore_tf1_checkpoint(
                model, run_dir, cfg.model,
                restore_final_layer=not cfg.run.do_not_restore_final_layer_weights)
            print(f"Restored TF1 checkpoint {report.checkpoint}: {report.mapped}", flush=True)
            return 0
        path = checkpoint.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
        if path is None:
            raise RunError(f"--pretrained evaluates the checkpoint in --checkpoint {run_dir!r}, "
                           f"but it holds none (no {checkpoint.LAST} pointer, no TF1 checkpoint).")
        _check_compatible(path, cfg, resume=False)
        state = checkpoint.load_checkpoint(path, {"model": list(model.variables)}, skip=skip)
        print(f"Restored {path} (meta-iteration {state['step']}) for evaluation", flush=True)
        return int(state["step"])
    path = resume_source(cfg)
    source = cfg.run.continue_training_from_checkpoint
    if path is None and source is not None:  # a TF1 checkpoint (resume_source takes the rest)
        report = tf1_checkpoint.restore_tf1_checkpoint(
            model, source, cfg.model,
            restore_final_layer=not cfg.run.do_not_restore_final_layer_weights)
        print(f"Continuing meta-training from TF1 checkpoint {report.checkpoint}: its weights "
              f"and batch-norm statistics {report.mapped}; optimizer state and meta-iteration "
              f"count start fresh", flush=True)
        return 0
    if path is None:
        return 0
    _check_compatible(path, cfg, resume=True)
    state = checkpoint.load_checkpoint(path, _checkpoint_groups(model, learner), skip=skip)
    rng.bit_generator.state = state["rng_state"]
    print(f"Resuming meta-training from {path} at meta-iteration {state['step']}", flush=True)
    return int(state["step"])


def _fine_tune_task_only(cfg: Config) -> int:
    """--fine-tune-task DIR with the flags' schedule: load --checkpoint's init, adapt, write."""
    task = experiments.load_user_folder(cfg)  # validated before any work or output
    keras.utils.set_random_seed(cfg.meta.seed)
    loop = experiments.make_inner_loop(cfg, build_model_with_backbone(cfg.model))
    restore(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, pretrained=True)),
            loop.model, None, None)
    experiments.fine_tune_user_folder(cfg, loop, None, task=task)
    return 0


# -------------------------------------------------------------------------- final evaluation
def _after_adapt(cfg: Config):
    """Per-task hooks on the adapted model (prediction PNGs with SAVE_PREDICTIONS)."""
    if not cfg.eval.predictions_dir:
        return None
    from adapt.predictions import save_prediction_png

    def save(name, repetition, episode, predicted, score):
        for i in range(len(predicted)):
            save_prediction_png(cfg.eval.predictions_dir, name, i, episode.query_images[i],
                                episode.query_masks[i], predicted[i], float(score.ious[i]),
                                repetition)
    return save


def final_evaluation(cfg: Config, loop: InnerLoop, tasks, names, *, split: str, stream: int,
                     num_samples: int, all_tasks: bool, desc: str, after_adapt=None,
                     schedule=None, protocol: str = "paper", replicas=None) -> EvalResult:
    """One evaluation of the current init with a progress bar.

    Args:
        cfg: run config (shots, queries, schedule, seed).
        loop: the inner loop.
        tasks: class name -> ClassData.
        names: classes of the split.
        split: "train" | "val" | "test".
        stream: random stream (same stream -> same episodes for any init).
        num_samples: repetitions / random task samples.
        all_tasks: every repetition covers every class.
        desc: progress-bar label.
        after_adapt: per-task hook.
        schedule: adaptation schedule (default: the flags' evaluation schedule).
        protocol: "paper", or "hsnet": every image of `names` a query once (stream, num_samples
            and all_tasks unused; adapt/protocol_hsnet.py).
        replicas: spread the tasks over these replicas (--distribute).

    Returns:
        EvalResult (HSNetResult for "hsnet").
    """
    if protocol == protocol_hsnet.PROTOCOL:
        progress = Progress(protocol_hsnet.num_queries(tasks, names), desc)
        result = protocol_hsnet.evaluate_hsnet(
            loop, tasks, names, schedule or evaluation_schedule(cfg.inner, cfg.eval),
            shots=cfg.eval.shots, transductive=cfg.eval.transductive, seed=cfg.meta.seed,
            split=split, after_adapt=after_adapt, on_task=lambda s: progress.update(iou=s.iou))
        progress.close()
        return result
    total = num_samples * len(names) if all_tasks else num_samples
    progress = Progress(total, desc)
    result = evaluate(loop, tasks, names, schedule or evaluation_schedule(cfg.inner, cfg.eval),
                      shots=cfg.eval.shots, num_query=cfg.eval.num_query,
                      transductive=cfg.eval.transductive, num_samples=num_samples,
                      all_tasks=all_tasks, seed=cfg.meta.seed, stream=stream, split=split,
                      after_adapt=after_adapt, replicas=replicas,
                      on_task=lambda s: progress.update(iou=s.iou))
    progress.close()
    return result


def _report(result: EvalResult, label: str) -> None:
    print(f"Mean of all {len(result.scores)} {label} task-splits ({result.protocol} protocol): "
          f"{result.mean_iou:.4f} +/- 95% CI: {result.ci95:.4f} (class-accumulated IoU: "
          f"{result.class_accumulated_iou:.4f})", flush=True)
    if isinstance(result, protocol_hsnet.HSNetResult):
        print(f"{label} under the hsnet protocol ({result.num_queries} queries, each its own "
              f"{result.shots}-shot episode): mIoU {result.class_accumulated_iou:.4f}, FB-IoU "
              f"{result.fb_iou:.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    cfg = parse_args(argv)
    try:
        return _run(cfg)
    except (UserError, ValueError, OSError, FloatingPointError) as e:
        print(f"run_metasegnet.py: error: {e}", file=sys.stderr, flush=True)
        return 2


def _run(cfg: Config) -> int:
    started = time.monotonic()
    # Devices, the cluster and the dtype policy come before TensorFlow runs its first op.
    configure_devices(cfg.device.distribute, cfg.device.num_replicas)
    strategy = make_strategy(cfg.device.distribute, cfg.device.num_replicas)
    set_precision(cfg.device.mixed_precision)
    # --- setup
    if cfg.run.fine_tune_task and not cfg.run.optimize_update_hyperparms_on_val_set:
        return _fine_tune_task_only(cfg)  # needs no --data-dir
    if modes.mtl.multiclass_pre_training(cfg):  # COCO / COCO-Stuff: needs no FSS-1000 shards
        out_dir = modes.mtl.phase_dir(cfg)
        _write_config(out_dir, cfg)
        keras.utils.set_random_seed(cfg.meta.seed)
        return modes.mtl.pre_train_multiclass_phase(cfg, out_dir,
                                                  np.random.default_rng([cfg.meta.seed, 0]))
    if cfg.data.data_dir is None:
        raise RunError("--data-dir (or --mdataset_dir) is required (a directory written by "
                       "fss_1000_image_to_tfrecord.py).")
    if not os.path.isfile(os.path.join(cfg.data.data_dir, "manifest.json")) and \
            os.path.isdir(os.path.join(cfg.data.data_dir, "train", "images")):
        raise RunError(f"--data-dir {cfg.data.data_dir!r} holds the MTL seed's image folders, "
                       f"not shards: convert them first with fss_1000_image_to_tfrecord.py "
                       f"--input_dir {cfg.data.data_dir} --tfrecord_dir SHARDS.")
    if cfg.run.fine_tune_task:
        experiments.load_user_folder(cfg)  # a bad folder fails before training, not after
    if not (cfg.run.pretrained or cfg.run.mtl or cfg.run.joint_train):
        source = resume_source(cfg)
        if source is not None:  # a refused resume leaves the run's config.json as it was
            _check_compatible(source, cfg, resume=True)
    run_dir = cfg.run.checkpoint
    if cfg.run.pretrained and not os.path.exists(run_dir):
        raise RunError(f"--pretrained evaluates the checkpoint in --checkpoint {run_dir!r}, which "
                       f"does not exist.")
    out_dir = run_dir if not os.path.isfile(run_dir) else os.path.dirname(os.path.abspath(run_dir))
    if cfg.run.mtl:  # meta-transfer learning writes each phase into <checkpoint>/<phase>
        out_dir = modes.mtl.phase_dir(cfg)
    keras.utils.set_random_seed(cfg.meta.seed)
    rng = np.random.default_rng([cfg.meta.seed, 0])  # the one training stream

    # --- data
    print(f"Reading --data-dir {cfg.data.data_dir} as "
          f"{FORMATS[data_format(cfg.data.data_dir)]}", flush=True)
    tasks = load_tasks(cfg.data.data_dir, cfg.data.image_size)
    splits = make_splits(cfg, sorted(tasks))
    eval_split = "val" if cfg.eval.eval_val_tasks else "test"
    eval_names = splits.val if cfg.eval.eval_val_tasks else splits.test
    print(f"Classes: {len(splits.train)} meta-train, {len(splits.val)} meta-val, "
          f"{len(splits.test)} meta-test. Final evaluation on the {eval_split} split "
          f"({len(eval_names)} classes); monitoring on {held_out_split(splits)[0]}.", flush=True)
    if not cfg.run.mtl:  # MTL draws its own episode sizes (--shot, --*_query)
        if cfg.eval.protocol == protocol_hsnet.PROTOCOL:
            protocol_hsnet.check_classes(tasks, eval_names, cfg.eval.shots)
        check_class_sizes(cfg, tasks, splits, eval_names)
    is_chief = strategy is None or bool(strategy.extended.should_checkpoint)
    if is_chief:  # only the chief of a cluster writes into --checkpoint
        _write_config(out_dir, cfg)
    if cfg.run.mtl and cfg.mtl.phase == "pre_train":
        return modes.mtl.pre_train_phase(cfg, tasks, splits, out_dir, rng)
    if cfg.run.mtl and cfg.mtl.phase == "meta_train":
        return modes.mtl.meta_train_phase(cfg, tasks, splits, out_dir, rng)

    # --- model
    if cfg.run.mtl:  # MTL meta_eval: the evaluation below, with the MTL head adaptation
        cfg, model, loop, mtl_tasks_done = modes.mtl.meta_eval_setup(cfg, splits, eval_names,
                                                                   eval_split)
        learner = None
    else:
        loop = experiments.make_inner_loop(cfg, build_model_with_backbone(cfg.model))
        model = loop.model
        if strategy is None:
            learner = MetaLearner(loop, cfg.meta, training_schedule(cfg.inner))
        else:
            replicas = Replicas(strategy, loop, lambda: experiments.make_inner_loop(
                cfg, build_model_with_backbone(cfg.model)))
            learner = DistributedMetaLearner(replicas, cfg.meta, training_schedule(cfg.inner))
            print(f"Distributed over {replicas.num_replicas} replicas "
                  f"({len(replicas.devices)} on this worker)", flush=True)
    replicas = getattr(learner, "replicas", None)
    initial_weights = [v.numpy() for v in model.variables] if cfg.run.compare_random_init else None

    # --- restore (joint training resumes its own checkpoints: baselines/joint_train.py)
    start_step = mtl_tasks_done if cfg.run.mtl else \
        0 if cfg.run.joint_train else restore(cfg, model, learner, rng)
    if cfg.run.export_keras:
        from storage.tf1_checkpoint import export_keras
        print(f"Exported the model to {export_keras(model, cfg.run.export_keras)}", flush=True)

    # --- loop
    if cfg.run.joint_train:
        experiments.joint_train_step(cfg, loop, tasks, splits, out_dir)
    elif not cfg.run.pretrained and start_step < cfg.meta.meta_iters:
        meta_train(learner, tasks, splits, meta=cfg.meta, evaluation=cfg.eval,
                   eval_schedule=evaluation_schedule(cfg.inner, cfg.eval), rng=rng,
                   run_dir=out_dir, config_json=cfg.to_json(),
                   checkpoint_groups=_checkpoint_groups(model, learner), start_step=start_step)
    if is_chief and os.path.isfile(os.path.join(out_dir, CSV_NAME)):
        plot_training_curves(os.path.join(out_dir, CSV_NAME), os.path.join(out_dir, PLOT_NAME),
                             val_label=held_out_split(splits)[0])

    # --- test-time adaptation: UHO on the val classes, then the experiment the flags ask for
    uho = (experiments.optimize_update_hyperparams_step(cfg, loop, tasks, splits, out_dir,
                                                        replicas=replicas)
           if cfg.run.optimize_update_hyperparms_on_val_set else None)
    if uho is not None and cfg.uho.meta_fine_tune_steps_on_train_val > 0:
        experiments.meta_fine_tune_on_train_val(cfg, loop, tasks, splits, out_dir, uho.best)
    if cfg.run.fine_tune_task:
        experiments.fine_tune_user_folder(cfg, loop, uho)
        return 0
    if cfg.run.run_k_shot_learning_curves_experiment:
        experiments.k_shot_step(cfg, loop, tasks, eval_names, out_dir, uho)
        return 0
    schedule, drop_rate = experiments.final_schedule(cfg, uho)

    # --- final evaluation: a few random train tasks, then the meta-test (or val) classes.
    # Every comparison below scores the same held-out episodes (same stream, same samples).
    evaluate_held_out = partial(final_evaluation, cfg, tasks=tasks, names=eval_names,
                                split=eval_split, stream=STREAM_TEST,
                                num_samples=cfg.eval.eval_samples,
                                all_tasks=cfg.eval.serially_eval_all_test_tasks,
                                protocol=cfg.eval.protocol, replicas=replicas)
    with dropout_rate(model, drop_rate, cfg.model.final_layer_dropout_rate):
        train_result = final_evaluation(
            cfg, loop, tasks, splits.train, split="train", stream=STREAM_TRAIN,
            num_samples=cfg.eval.eval_samples, all_tasks=False, desc="eval train tasks",
            schedule=schedule, replicas=replicas,
            after_adapt=experiments.evaluation_hooks(cfg, model, "train", out_dir))
        result = evaluate_held_out(
            loop, desc=f"eval {eval_split} tasks", schedule=schedule,
            after_adapt=experiments.evaluation_hooks(cfg, model, eval_split, out_dir,
                                                     _after_adapt(cfg)))
    _report(train_result, "meta-train")
    _report(result, f"meta-{eval_split}")
    print(f"Mean IoU over all meta-{eval_split} tasks: {result.mean_iou}", flush=True)
    results = {**result.summary(), "train_tasks": train_result.summary(),
               "meta_iterations": start_step if cfg.run.pretrained else cfg.meta.meta_iters,
               "config": json.loads(cfg.to_json())}
    if uho is not None:  # the flags' fixed schedule on the same episodes, for comparison
        fixed = evaluate_held_out(loop, desc="eval fixed schedule")
        results["uho"] = experiments.uho_comparison(cfg, uho, result, fixed)
    if initial_weights is not None:
        for v, value in zip(model.variables, initial_weights):
            v.assign(value)
        random_result = evaluate_held_out(loop, desc="eval random init")
        results["random_init"] = random_result.summary()
        print(f"Same adaptation ({cfg.eval.eval_iters} steps, {cfg.eval.shots}-shot) on the same "
              f"{eval_split} episodes: meta-learned init mIoU {result.mean_iou:.4f} "
              f"+/- {result.ci95:.4f} vs random init {random_result.mean_iou:.4f} "
              f"+/- {random_result.ci95:.4f}", flush=True)
    if cfg.run.mtl and cfg.mtl.init_weights:  # MTL: the pre-trained U-Net adapted the same way
        base = evaluate_held_out(modes.mtl.pretrained_loop(cfg), desc="eval pre-trained U-Net")
        results["pretrained_fine_tuned"] = base.summary()
        print(f"Same adaptation ({cfg.mtl.update_step} head steps, {cfg.mtl.teshot}-shot) on the "
              f"same {eval_split} episodes: MTL mIoU {result.mean_iou:.4f} +/- {result.ci95:.4f} "
              f"vs pre-trained U-Net {base.mean_iou:.4f} +/- {base.ci95:.4f}", flush=True)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    if not is_chief:
        return 0
    path = write_results(out_dir, results)
    print(f"Results written to {path} ({format_seconds(time.monotonic() - started)} in all)",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
