"""Episode sampling: pure functions of an explicit `np.random.Generator`, so runs reproduce.

An episode is one task's k support (training) shots and q query (test) shots, drawn disjointly and
uniformly from all of the class's pairs; the reference instead always took the first k+q records
in file order (ml4ai/mliis meta_learners/metaseg.py), which we fix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.tasks import ClassData


@dataclass(frozen=True)
class Episode:
    """k support and q query pairs of one class.

    Attributes:
        support_images: uint8 (k, S, S, 3).
        support_masks: uint8 (k, S, S) in {0,1}.
        query_images: uint8 (q, S, S, 3).
        query_masks: uint8 (q, S, S) in {0,1}.
    """

    support_images: np.ndarray
    support_masks: np.ndarray
    query_images: np.ndarray
    query_masks: np.ndarray


def sample_episode(rng: np.random.Generator, class_data: ClassData, num_support: int,
                   num_query: int) -> Episode:
    """Draw disjoint support and query pairs at random from one class.

    Args:
        rng: the run's generator; the same generator state gives the same episode.
        class_data: the class to sample from.
        num_support: k >= 1 support shots.
        num_query: q >= 0 query shots.

    Returns:
        Episode with support arrays (k,S,S,3)/(k,S,S) and query arrays (q,S,S,3)/(q,S,S), uint8
        copies (mutating them does not touch class_data).

    Raises:
        ValueError: k < 1, q < 0, or the class has fewer than k + q pairs.
    """
    if num_support < 1:
        raise ValueError(f"num_support (shots) must be >= 1. Received: {num_support}")
    if num_query < 0:
        raise ValueError(f"num_query must be >= 0. Received: {num_query}")
    n = len(class_data)
    if num_support + num_query > n:
        raise ValueError(
            f"Class {class_data.name!r} has {n} pairs but the episode needs num_support + num_query "
            f"= {num_support} + {num_query} = {num_support + num_query}. Lower the shots/queries.")
    order = rng.permutation(n)
    return episode_at(class_data, order[:num_support], order[num_support:num_support + num_query])


def episode_at(class_data: ClassData, support: np.ndarray, query: np.ndarray) -> Episode:
    """The episode made of the given pair indices of one class.

    Args:
        class_data: the class.
        support: int (k,) indices of the support pairs.
        query: int (q,) indices of the query pairs.

    Returns:
        Episode of uint8 copies (fancy indexing copies).
    """
    support, query = np.asarray(support, np.int64), np.asarray(query, np.int64)
    return Episode(support_images=class_data.images[support],
                   support_masks=class_data.masks[support],
                   query_images=class_data.images[query],
                   query_masks=class_data.masks[query])


def supports_per_query(rng: np.random.Generator, num_images: int, num_support: int) -> np.ndarray:
    """Every image of a class as the query once, each with its own k supports from the others.

    The evaluation of HSNet and its successors on FSS-1000 (juhongm999/hsnet data/fss.py): one
    episode per image. Supports are k distinct images other than the query, drawn uniformly; that
    loader drew them one at a time and could repeat one, which this does not.

    Args:
        rng: the generator; the same generator state gives the same supports.
        num_images: n >= 2 images in the class.
        num_support: k >= 1 supports per query, k <= n - 1.

    Returns:
        int64 (n, k): row i holds the support indices of query image i (never i itself).

    Raises:
        ValueError: k < 1 or k > n - 1.
    """
    if num_support < 1:
        raise ValueError(f"num_support (shots) must be >= 1. Received: {num_support}")
    if num_support > num_images - 1:
        raise ValueError(f"Each query needs {num_support} supports among the other images of its "
                         f"class, but the class has {num_images} images. Lower the shots.")
    rows = np.empty((num_images, num_support), np.int64)
    for query in range(num_images):
        others = rng.permutation(num_images - 1)[:num_support]
        rows[query] = others + (others >= query)  # skip the query's own index
    return rows


def mini_batch_indices(rng: np.random.Generator, num_examples: int, batch_size: int,
                       num_batches: int, replacement: bool = False) -> np.ndarray:
    """Indices of the inner-loop mini-batches over one task's support set (reference `_mini_batches`).

    Without replacement (the default): shuffle 0..num_examples-1, walk it, start a new shuffle when
    it runs out, and emit a batch every `batch_size` indices; batches continue across reshuffles,
    so with 5 shots and batch 8 a batch holds one full pass plus 3 of the next (duplicates inside a
    batch are expected, ml4ai/mliis meta_learners/metaseg.py). With replacement: each batch is an
    independent draw of
    `batch_size` distinct indices.

    Args:
        rng: the run's generator.
        num_examples: size of the support set (>= 1).
        batch_size: indices per batch (>= 1); with replacement it must be <= num_examples.
        num_batches: number of batches (>= 0), i.e. inner iterations.
        replacement: draw each batch independently (reference `--replacement`).

    Returns:
        int64 array (num_batches, batch_size) of indices in [0, num_examples).

    Raises:
        ValueError: on non-positive sizes, or replacement with batch_size > num_examples.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1. Received: {num_examples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: {batch_size}")
    if num_batches < 0:
        raise ValueError(f"num_batches must be >= 0. Received: {num_batches}")
    if replacement:
        if batch_size > num_examples:
            raise ValueError(
                f"With replacement each batch holds distinct examples, so batch_size must be <= "
                f"num_examples. Received: batch_size={batch_size}, num_examples={num_examples}")
        return np.stack([rng.choice(num_examples, size=batch_size, replace=False)
                         for _ in range(num_batches)]).astype(np.int64).reshape(num_batches, batch_size)
    total = num_batches * batch_size
    passes = -(-total // num_examples)  # ceil: whole shuffled passes, then cut
    walk = np.concatenate([rng.permutation(num_examples) for _ in range(passes)]) if passes else \
        np.zeros(0, np.int64)
    return walk[:total].astype(np.int64).reshape(num_batches, batch_size)
