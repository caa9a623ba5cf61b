"""The FSS-1000 protocol of HSNet and its successors: every test image is the query of one episode.

HSNet, VAT, DCAMA and Matcher report FSS-1000 this way (juhongm999/hsnet data/fss.py and
common/logger.py), so a number from here compares with theirs; the paper's protocol
(adapt/evaluate.py: task samples of k supports + 5 queries, mean task IoU) stays the default.

* Episodes: for each class (in the given order) and each of its images, that image is the only
  query, and its k supports are k distinct other images of the class drawn at random
  (`data.episodes.supports_per_query`). A class of n images gives n episodes; FSS-1000's 240
  test classes of 10 images give 2,400.
* Adaptation: each episode is one `adapt.evaluate.evaluate_task`: adapt the init on its k supports
  with the evaluation's adaptation, predict the query, restore the full state. So an init is scored
  with the same inner loop as under the paper's protocol, only on other episodes.
* Scores: mIoU = per class, sum of intersections / sum of unions over its queries, then the mean
  over classes (a class with no union at all scores 0, as HSNet's max(union, 1)); FB-IoU = the
  mean of the foreground IoU and the background IoU, each accumulated over every query of every
  class together (not per class), as HSNet's logger. The mean per-query IoU and its 95% CI are
  kept as `mean_iou` / `ci95` (each episode has one query).

Random streams under one seed: the supports of the c-th class come from
`default_rng([seed, STREAM_HSNET, c])`, the mini-batches and augmentation of its i-th query from
`default_rng([seed, STREAM_HSNET, c, i + 1])`, so any init is scored on the same episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np

from adapt import iou
from adapt.evaluate import AfterAdapt, EvalResult, TaskScore, evaluate_task
from data.episodes import episode_at, supports_per_query
from data.tasks import ClassData
from meta.adaptation import Adaptation
from meta.streams import STREAM_HSNET

PROTOCOL = "hsnet"


@dataclass(frozen=True)
class HSNetResult(EvalResult):
    """One episode per query image; the scores HSNet and its successors report.

    Attributes:
        split: which classes were evaluated.
        scores: one TaskScore (one query) per episode, class by class, queries in image order.
        shots: supports per episode.
        pixels_per_image: pixels of each query mask (S * S).
    """

    protocol: ClassVar[str] = PROTOCOL
    shots: int
    pixels_per_image: int

    @property
    def num_queries(self) -> int:
        """Episodes evaluated, one per query image."""
        return len(self.scores)

    @property
    def class_accumulated_iou(self) -> float:
        """mIoU: per class sum(I) / sum(U) over its queries, mean over classes."""
        return iou.class_accumulated_iou(self.per_class_counts, empty_class=0.0)

    @property
    def foreground_background_iou(self) -> tuple[float, float]:
        """(foreground IoU, background IoU), each accumulated over every query."""
        inter = np.concatenate([s.intersections for s in self.scores])
        union = np.concatenate([s.unions for s in self.scores])
        return iou.foreground_background_iou(inter, union, [self.pixels_per_image] * len(inter))

    @property
    def fb_iou(self) -> float:
        """FB-IoU: the mean of the foreground and background IoU."""
        return float(np.mean(self.foreground_background_iou))

    def summary(self) -> dict:
        """JSON-ready summary: the paper-style fields plus shots, queries and FB-IoU."""
        foreground, background = self.foreground_background_iou
        return {**super().summary(), "shots": self.shots, "num_queries": self.num_queries,
                "fb_iou": self.fb_iou, "foreground_iou": foreground,
                "background_iou": background}


def num_queries(tasks: Mapping[str, ClassData], names: Sequence[str]) -> int:
    """Episodes the protocol runs on these classes: one per image."""
    return sum(len(tasks[name]) for name in names)


def check_classes(tasks: Mapping[str, ClassData], names: Sequence[str], shots: int) -> None:
    """Raise before any adaptation if a class cannot give every image k other supports.

    Args:
        tasks: class name -> ClassData.
        names: the classes to evaluate.
        shots: supports per query.

    Raises:
        ValueError: no classes, or a class with fewer than shots + 1 images (every one named).
    """
    if not names:
        raise ValueError("the hsnet protocol needs at least one class; the split is empty.")
    small = [f"{name!r} ({len(tasks[name])})" for name in names if len(tasks[name]) < shots + 1]
    if small:
        raise ValueError(f"the hsnet protocol gives every query {shots} supports among the other "
                         f"images of its class, so each class needs >= {shots + 1} images; "
                         f"these have fewer: {', '.join(small)}. Lower --shots.")


def evaluate_hsnet(loop, tasks: Mapping[str, ClassData], names: Sequence[str],
                   adaptation: Adaptation, *, shots: int, transductive: bool, seed: int,
                   split: str, after_adapt: AfterAdapt | None = None,
                   on_task: Callable[[TaskScore], None] | None = None) -> HSNetResult:
    """Score the loop's current init with one episode per image of every class (no side effect).

    Args:
        loop: the compiled inner loop (meta.inner.InnerLoop).
        tasks: class name -> ClassData.
        names: the classes to evaluate (their order fixes the random streams).
        adaptation: the test-time adaptation (the paper's evaluation's).
        shots: k supports per query.
        transductive: see adapt.evaluate.predict_queries (one query either way).
        seed: run seed.
        split: label stored in the result.
        after_adapt: hook called per episode on the adapted model (repetition = query index).
        on_task: called after each episode (e.g. a progress bar).

    Returns:
        HSNetResult.
    """
    check_classes(tasks, names, shots)
    scores = []
    for class_index, name in enumerate(names):
        data = tasks[name]
        supports = supports_per_query(np.random.default_rng([seed, STREAM_HSNET, class_index]),
                                      len(data), shots)
        for query, support in enumerate(supports):
            rng = np.random.default_rng([seed, STREAM_HSNET, class_index, query + 1])
            score = evaluate_task(loop, name, episode_at(data, support, [query]), adaptation, rng,
                                  transductive=transductive, repetition=query,
                                  after_adapt=after_adapt)
            scores.append(score)
            if on_task is not None:
                on_task(score)
    first = tasks[names[0]].masks
    return HSNetResult(split=split, scores=tuple(scores), shots=shots,
                       pixels_per_image=int(first.shape[1] * first.shape[2]))
