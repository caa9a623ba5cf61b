"""The final evaluation of an init: test-time adaptation on held-out classes, scores, results.

Every comparison scores the same held-out episodes (same stream, same samples) as the init: UHO's
schedule against the flags', the meta-learned init against a random one, MTL against the
pre-trained U-Net it started from.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from functools import partial

from adapt import protocol_hsnet
from adapt.evaluate import EvalResult, evaluate
from args import Config
from meta.inner import InnerLoop
from meta.streams import STREAM_TEST, STREAM_TRAIN
from modes import experiments, mtl
from modes.prepare import Run
from report.progress import Progress, format_seconds
from storage import atomic

RESULTS_NAME = "meta-test_results.json"


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
            atomic.write_text(os.path.join(out_dir, f"{stem}-{next_n}{ext}"),
                              current.decode("utf-8", "replace"))
            next_n += 1
    text = json.dumps(results, indent=1)
    atomic.write_text(os.path.join(out_dir, f"{stem}-{next_n}{ext}"), text)
    atomic.write_text(path, text)
    return path


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
                     adaptation=None, protocol: str = "paper", replicas=None) -> EvalResult:
    """One evaluation of the current init with a progress bar.

    Args:
        cfg: run config (shots, queries, adaptation, seed).
        loop: the inner loop.
        tasks: class name -> ClassData.
        names: classes of the split.
        split: "train" | "val" | "test".
        stream: random stream (same stream -> same episodes for any init).
        num_samples: repetitions / random task samples.
        all_tasks: every repetition covers every class.
        desc: progress-bar label.
        after_adapt: per-task hook.
        adaptation: the test-time adaptation (default: the run's, cfg.adapt).
        protocol: "paper", or "hsnet": every image of `names` a query once (stream, num_samples
            and all_tasks unused; adapt/protocol_hsnet.py).
        replicas: spread the tasks over these replicas (--distribute).

    Returns:
        EvalResult (HSNetResult for "hsnet").
    """
    adaptation = adaptation or cfg.adapt
    if protocol == protocol_hsnet.PROTOCOL:
        progress = Progress(protocol_hsnet.num_queries(tasks, names), desc)
        result = protocol_hsnet.evaluate_hsnet(
            loop, tasks, names, adaptation,
            shots=cfg.eval.shots, transductive=cfg.eval.transductive, seed=cfg.meta.seed,
            split=split, after_adapt=after_adapt, on_task=lambda s: progress.update(iou=s.iou))
        progress.close()
        return result
    total = num_samples * len(names) if all_tasks else num_samples
    progress = Progress(total, desc)
    evaluation = dataclasses.replace(cfg.eval, eval_samples=num_samples,
                                     serially_eval_all_test_tasks=all_tasks)
    result = evaluate(loop, tasks, names, adaptation, evaluation, seed=cfg.meta.seed, stream=stream, split=split,
                      after_adapt=after_adapt, replicas=replicas,
                      on_task=lambda s: progress.update(iou=s.iou))
    progress.close()
    return result


def report(result: EvalResult, label: str) -> None:
    print(f"Mean of all {len(result.scores)} {label} task-splits ({result.protocol} protocol): "
          f"{result.mean_iou:.4f} +/- 95% CI: {result.ci95:.4f} (class-accumulated IoU: "
          f"{result.class_accumulated_iou:.4f})", flush=True)
    if isinstance(result, protocol_hsnet.HSNetResult):
        print(f"{label} under the hsnet protocol ({result.num_queries} queries, each its own "
              f"{result.shots}-shot episode): mIoU {result.class_accumulated_iou:.4f}, FB-IoU "
              f"{result.fb_iou:.4f}", flush=True)


def evaluate_init(run: Run, loop: InnerLoop, uho, *, start_step: int, replicas=None,
                  initial_weights=None) -> int:
    """The final evaluation: a few random train tasks, then the meta-test (or val) classes, the
    comparisons on the same episodes, and meta-test_results.json.

    Args:
        run: the prepared run.
        loop: the inner loop holding the init.
        uho: UHO's result (its adaptation is evaluated, and the flags' beside it), or None.
        start_step: completed meta-iterations of the init (recorded in the results).
        replicas: spread the evaluation over these replicas (--distribute).
        initial_weights: the weights before training, for --compare_random_init.

    Returns:
        the exit status.
    """
    cfg, model, eval_split = run.cfg, loop.model, run.eval_split
    adaptation = experiments.final_adaptation(cfg, uho)
    evaluate_held_out = partial(final_evaluation, cfg, tasks=run.tasks, names=run.eval_names,
                                split=eval_split, stream=STREAM_TEST,
                                num_samples=cfg.eval.eval_samples,
                                all_tasks=cfg.eval.serially_eval_all_test_tasks,
                                protocol=cfg.eval.protocol, replicas=replicas)
    train_result = final_evaluation(
        cfg, loop, run.tasks, run.splits.train, split="train", stream=STREAM_TRAIN,
        num_samples=cfg.eval.eval_samples, all_tasks=False, desc="eval train tasks",
        adaptation=adaptation, replicas=replicas,
        after_adapt=experiments.evaluation_hooks(cfg, model, "train", run.out_dir))
    result = evaluate_held_out(
        loop, desc=f"eval {eval_split} tasks", adaptation=adaptation,
        after_adapt=experiments.evaluation_hooks(cfg, model, eval_split, run.out_dir,
                                                 _after_adapt(cfg)))
    report(train_result, "meta-train")
    report(result, f"meta-{eval_split}")
    print(f"Mean IoU over all meta-{eval_split} tasks: {result.mean_iou}", flush=True)
    results = {**result.summary(), "train_tasks": train_result.summary(),
               "meta_iterations": start_step if cfg.run.pretrained else cfg.meta.meta_iters,
               "config": json.loads(cfg.to_json())}
    results.update(_comparisons(run, loop, uho, result, evaluate_held_out, initial_weights))
    results["wall_seconds"] = round(time.monotonic() - run.started, 1)
    if not run.is_chief:
        return 0
    path = write_results(run.out_dir, results)
    print(f"Results written to {path} ({format_seconds(time.monotonic() - run.started)} in all)",
          flush=True)
    return 0


def _comparisons(run: Run, loop: InnerLoop, uho, result: EvalResult, evaluate_held_out,
                 initial_weights) -> dict:
    """The same held-out episodes under the flags' schedule, a random init, the MTL base U-Net."""
    cfg, model, eval_split = run.cfg, loop.model, run.eval_split
    results = {}
    if uho is not None:  # the flags' fixed schedule on the same episodes, for comparison
        fixed = evaluate_held_out(loop, desc="eval fixed schedule")
        results["uho"] = experiments.uho_comparison(cfg, uho, result, fixed)
    if initial_weights is not None:
        for v, value in zip(model.variables, initial_weights):
            v.assign(value)
        random_result = evaluate_held_out(loop, desc="eval random init")
        results["random_init"] = random_result.summary()
        print(f"Same adaptation ({cfg.adapt.steps} steps, {cfg.eval.shots}-shot) on the same "
              f"{eval_split} episodes: meta-learned init mIoU {result.mean_iou:.4f} "
              f"+/- {result.ci95:.4f} vs random init {random_result.mean_iou:.4f} "
              f"+/- {random_result.ci95:.4f}", flush=True)
    if cfg.run.mtl and cfg.mtl.init_weights:  # MTL: the pre-trained U-Net adapted the same way
        base = evaluate_held_out(mtl.pretrained_loop(cfg), desc="eval pre-trained U-Net")
        results["pretrained_fine_tuned"] = base.summary()
        print(f"Same adaptation ({cfg.adapt.steps} head steps, {cfg.eval.shots}-shot) on the "
              f"same {eval_split} episodes: MTL mIoU {result.mean_iou:.4f} +/- {result.ci95:.4f} "
              f"vs pre-trained U-Net {base.mean_iou:.4f} +/- {base.ci95:.4f}", flush=True)
    return results
