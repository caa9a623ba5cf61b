"""Meta-test evaluation: adapt a copy of the init on each task's support set, score its queries.

Per task sample (ml4ai/mliis meta_learners/supervised_reptile/supervised_reptile/eval.py): draw
`shots` support + `num_query` query pairs at random,
snapshot the full state, adapt as the `Adaptation` says, predict the queries in inference mode
(together with --transductive, else each query batched after the support images), score IoU per
query image, restore the full state (weights, BN statistics, optimizer slots, dropout seeds), so
no task leaks into the next and evaluation has no side effect.

Every task sample has its own generator, `np.random.default_rng([seed, stream, repetition,
task_index])`: the same seed gives the same episodes, mini-batches and augmentations for any
init, so a meta-learned and a random init are compared on identical data.

Hooks:
* `evaluate_task(..., on_step=...)`: called after every adaptation step, e.g. UHO scoring the
  queries (`predict_queries` + `adapt.iou`) for early stopping;
* `after_adapt(task_name, repetition, episode, predicted, score)`: called on the adapted model
  before the restore (prediction PNGs, fine-tuned checkpoints).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np

from adapt import iou
from adapt.config import EvalConfig
from data.episodes import Episode, sample_episode
from data.splits import Splits
from data.tasks import ClassData
from meta.adaptation import Adaptation
from meta.config import MetaConfig
from meta.inner import InnerLoop, StepCallback, adapt
from meta.streams import STREAM_MONITOR
from meta.train import MonitorResult, held_out_split

_PLAN_TAG = 2**31

# after_adapt(task_name, repetition, episode, predicted_foreground, score) -> None
AfterAdapt = Callable[[str, int, Episode, np.ndarray, "TaskScore"], None]


@dataclass(frozen=True)
class TaskScore:
    """Scores of one task sample.

    Attributes:
        name: class name.
        repetition: which sample of the class (0-based).
        ious: float64 (q,) IoU per query image.
        intersections: int64 (q,) |P & G| per query image.
        unions: int64 (q,) |P | G| per query image.
        steps_taken: adaptation steps run.
        query_loss: the training loss of the adapted model on the query images.
    """

    name: str
    repetition: int
    ious: np.ndarray
    intersections: np.ndarray
    unions: np.ndarray
    steps_taken: int
    query_loss: float = float("nan")

    @property
    def iou(self) -> float:
        """Task IoU: the mean over its query images."""
        return float(np.mean(self.ious))


@dataclass(frozen=True)
class EvalResult:
    """All task samples of one evaluation.

    Attributes:
        split: which classes were evaluated ("train", "val", "test").
        scores: one TaskScore per task sample, in evaluation order.
        protocol: which evaluation protocol made it ("paper" here).
    """

    protocol: ClassVar[str] = "paper"
    split: str
    scores: tuple[TaskScore, ...]

    @property
    def task_ious(self) -> np.ndarray:
        """IoU of every task sample."""
        return np.array([s.iou for s in self.scores], np.float64)

    @property
    def mean_iou(self) -> float:
        """The paper's metric: mean task IoU over all task samples."""
        return float(np.mean(self.task_ious))

    @property
    def mean_query_loss(self) -> float:
        """Mean query loss after adaptation over all task samples."""
        return float(np.mean([s.query_loss for s in self.scores]))

    @property
    def ci95(self) -> float:
        """Half-width of its 95% confidence interval."""
        return iou.confidence_interval_95(self.task_ious)

    @property
    def per_class_counts(self) -> dict[str, list[tuple[int, int]]]:
        """class -> (intersection, union) of every query image scored in it."""
        per_class: dict[str, list[tuple[int, int]]] = {}
        for s in self.scores:
            per_class.setdefault(s.name, []).extend(zip(s.intersections.tolist(),
                                                        s.unions.tolist()))
        return per_class

    @property
    def class_accumulated_iou(self) -> float:
        """HSNet/DCAMA/VAT metric: per-class sum(I)/sum(U), mean over classes."""
        return iou.class_accumulated_iou(self.per_class_counts)

    @property
    def per_task(self) -> dict[str, list[float]]:
        """class -> [task IoU of each repetition] (the reference's results JSON)."""
        out: dict[str, list[float]] = {}
        for s in self.scores:
            out.setdefault(s.name, []).append(s.iou)
        return out

    def summary(self) -> dict:
        """JSON-ready summary: metrics, counts and per-task IoUs."""
        return {"protocol": self.protocol, "split": self.split, "mean_iou": self.mean_iou,
                "ci95": self.ci95,
                "class_accumulated_iou": self.class_accumulated_iou,
                "num_task_samples": len(self.scores), "num_classes": len(self.per_task),
                "per_task": self.per_task}


def predict_queries(loop: InnerLoop, support_images: np.ndarray, query_images: np.ndarray,
                    transductive: bool) -> np.ndarray:
    """Foreground/background probabilities of the queries, model in inference mode.

    Args:
        loop: the (adapted) inner loop.
        support_images: (k,S,S,3) support images.
        query_images: (q,S,S,3) query images.
        transductive: predict all queries in one batch; otherwise each query is batched after the
            support images and its own output kept (the reference's two paths; with BN in
            inference mode both give the same output).

    Returns:
        float32 (q,S,S,2).
    """
    if transductive:
        return loop.predict(query_images).numpy()
    outputs = [loop.predict(np.concatenate([support_images, query_images[i:i + 1]]))[-1].numpy()
               for i in range(len(query_images))]
    return np.stack(outputs)


def evaluate_task(loop: InnerLoop, name: str, episode: Episode, adaptation: Adaptation,
                  rng: np.random.Generator, *, transductive: bool, repetition: int = 0,
                  on_step: StepCallback | None = None,
                  after_adapt: AfterAdapt | None = None) -> TaskScore:
    """Adapt on the episode's support set, score its queries, restore the full state.

    Args:
        loop: the compiled inner loop (its model holds the init to evaluate).
        name: class name.
        episode: support and query pairs.
        adaptation: the test-time adaptation.
        rng: draws mini-batches and augmentation seeds.
        transductive: see predict_queries.
        repetition: index of this sample of the class.
        on_step: per-step callback (steps_taken, loss) -> stop, e.g. early stopping.
        after_adapt: called with the adapted model before the restore.

    Returns:
        TaskScore.
    """
    loop.full_state.save()
    try:
        result = adapt(loop, episode.support_images, episode.support_masks, adaptation, rng,
                       on_step=on_step)
        probabilities = predict_queries(loop, episode.support_images, episode.query_images,
                                        transductive)
        predicted = iou.foreground(probabilities)
        inter, union = iou.intersections_unions(predicted, episode.query_masks)
        targets = np.eye(probabilities.shape[-1], dtype=np.float32)[episode.query_masks]
        score = TaskScore(name=name, repetition=repetition,
                          ious=iou.ratio(inter, union),
                          intersections=inter, unions=union, steps_taken=result.steps_taken,
                          query_loss=float(loop.loss_fn(targets, probabilities)))
        if after_adapt is not None:
            after_adapt(name, repetition, episode, predicted, score)
    finally:
        loop.full_state.restore()
    return score


def _key(seed: int, stream: int | Sequence[int], *rest: int) -> list[int]:
    """Entropy for np.random.default_rng: [seed, *stream, *rest]."""
    stream = [stream] if isinstance(stream, (int, np.integer)) else list(stream)
    return [int(seed), *map(int, stream), *map(int, rest)]


def evaluation_plan(names: Sequence[str], *, num_samples: int, all_tasks: bool, seed: int,
                    stream: int | Sequence[int]) -> list[tuple[int, int]]:
    """Which (repetition, task index) pairs an evaluation visits.

    Args:
        names: the split's class names.
        num_samples: repetitions over all tasks (all_tasks) or number of random task samples.
        all_tasks: --serially_eval_all_test_tasks: every repetition covers every class in order.
        seed: run seed.
        stream: random stream (STREAM_*, or e.g. (STREAM_MONITOR, meta_iteration)), so
            different evaluations pick different tasks.

    Returns:
        list of (repetition, index into names).
    """
    if not names:
        raise ValueError("evaluation needs at least one class; the split is empty.")
    if all_tasks:
        return [(r, i) for r in range(num_samples) for i in range(len(names))]
    # The plan's key ends in a tag no repetition uses: SeedSequence pads short keys with
    # zeros, so [seed, stream] would equal the key of (repetition 0, task 0).
    picks = np.random.default_rng(_key(seed, stream, _PLAN_TAG)).choice(
        len(names), size=num_samples, replace=num_samples > len(names))
    return [(r, int(i)) for r, i in enumerate(picks)]


def evaluate(loop: InnerLoop, tasks: Mapping[str, ClassData], names: Sequence[str],
             adaptation: Adaptation, evaluation: EvalConfig, *, seed: int,
             stream: int | Sequence[int], split: str, after_adapt: AfterAdapt | None = None,
             on_task: Callable[[TaskScore], None] | None = None, replicas=None) -> EvalResult:
    """Evaluate the loop's current init on a split (no side effect on any variable).

    Args:
        loop: the compiled inner loop.
        tasks: class name -> ClassData.
        names: the split's class names (sorted).
        adaptation: the test-time adaptation.
        evaluation: shots and num_query per task, transductive (predict the queries as one
            batch), eval_samples and serially_eval_all_test_tasks (evaluation_plan's num_samples
            and all_tasks).
        seed: run seed.
        stream: random stream of this evaluation (STREAM_TEST, STREAM_TRAIN, ...).
        split: label stored in the result ("train", "val", "test").
        after_adapt: hook called per task on the adapted model.
        on_task: called after each task sample (e.g. a progress bar).
        replicas: a `devices.distribute.Replicas`: task sample p runs on global replica p % R and
            every worker gets every score (the same scores as serially: each sample has its
            own generator and starts from the same full state). Ignored with after_adapt.

    Returns:
        EvalResult.
    """
    plan = evaluation_plan(names, num_samples=evaluation.eval_samples,
                           all_tasks=evaluation.serially_eval_all_test_tasks, seed=seed,
                           stream=stream)
    shots, num_query = evaluation.shots, evaluation.num_query

    def run_item(run_loop: InnerLoop, position: int) -> TaskScore:
        repetition, index = plan[position]
        name = names[index]
        rng = np.random.default_rng(_key(seed, stream, repetition, index))
        episode = sample_episode(rng, tasks[name], shots, num_query)
        return evaluate_task(run_loop, name, episode, adaptation, rng,
                             transductive=evaluation.transductive,
                             repetition=repetition, after_adapt=after_adapt)

    # Hooks act on the run's own model (checkpoints of it), so they keep the serial path.
    if replicas is None or after_adapt is not None:
        scores = []
        for position in range(len(plan)):
            scores.append(run_item(loop, position))
            if on_task is not None:
                on_task(scores[-1])
        return EvalResult(split=split, scores=tuple(scores))
    rows = replicas.spread(len(plan), lambda run_loop, p: _score_row(run_item(run_loop, p)),
                           2 * num_query + 1)
    scores = []
    for (repetition, index), row in zip(plan, rows):
        scores.append(_row_score(names[index], repetition, row, num_query))
        if on_task is not None:
            on_task(scores[-1])
    return EvalResult(split=split, scores=tuple(scores))


def _score_row(score: TaskScore) -> np.ndarray:
    """A task's counts as one float32 row (pixel counts are exact in float32 below 2**24)."""
    return np.concatenate([score.intersections, score.unions,
                           [score.steps_taken]]).astype(np.float32)


def _row_score(name: str, repetition: int, row: np.ndarray, num_query: int) -> TaskScore:
    inter = np.rint(row[:num_query]).astype(np.int64)
    union = np.rint(row[num_query:2 * num_query]).astype(np.int64)
    return TaskScore(name=name, repetition=repetition,
                     ious=iou.ratio(inter, union), intersections=inter,
                     unions=union, steps_taken=int(round(float(row[-1]))))


def monitor(learner, tasks: Mapping[str, ClassData], splits: Splits, step: int, *,
            meta: MetaConfig, evaluation: EvalConfig, adaptation: Adaptation) -> MonitorResult:
    """Evaluate `meta.monitor_tasks` random train tasks and held-out tasks (no side effects).

    Args:
        learner: the meta-learner (its inner loop is used).
        tasks: class name -> ClassData.
        splits: class splits.
        step: completed meta-iterations (selects the random stream).
        meta: monitor_tasks and seed.
        evaluation: shots, queries, transductive.
        adaptation: the test-time adaptation.

    Returns:
        MonitorResult.
    """
    label, held_out = held_out_split(splits)
    results = []
    for index, (split, names) in enumerate((("train", splits.train), (label, held_out))):
        few = dataclasses.replace(evaluation, eval_samples=min(meta.monitor_tasks, len(names)),
                                  serially_eval_all_test_tasks=False)
        results.append(evaluate(learner.loop, tasks, names, adaptation, few, seed=meta.seed,
                                stream=(STREAM_MONITOR, step, index), split=split,
                                replicas=getattr(learner, "replicas", None)))
    return MonitorResult(train=results[0], held_out=results[1])
