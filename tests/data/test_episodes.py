"""Episode sampling and inner-loop mini-batch indices."""
import numpy as np
import pytest

from data.episodes import mini_batch_indices, sample_episode
from data.tasks import ClassData


def make_class(n=10, size=8):
    # Pair i is recognisable: every image pixel is i, every mask pixel is i % 2.
    images = np.repeat(np.arange(n, dtype=np.uint8), size * size * 3).reshape(n, size, size, 3)
    masks = (np.repeat(np.arange(n), size * size).reshape(n, size, size) % 2).astype(np.uint8)
    return ClassData(name="bus", images=images, masks=masks)


def test_episode_shapes_disjoint_and_paired():
    data = make_class()
    episode = sample_episode(np.random.default_rng(0), data, num_support=5, num_query=3)
    assert episode.support_images.shape == (5, 8, 8, 3) and episode.support_masks.shape == (5, 8, 8)
    assert episode.query_images.shape == (3, 8, 8, 3) and episode.query_masks.shape == (3, 8, 8)
    assert episode.support_images.dtype == np.uint8 and episode.query_masks.dtype == np.uint8
    support = episode.support_images[:, 0, 0, 0].tolist()
    query = episode.query_images[:, 0, 0, 0].tolist()
    assert len(set(support + query)) == 8  # disjoint, no repeats
    np.testing.assert_array_equal(episode.support_masks[:, 0, 0], np.array(support) % 2)
    episode.support_images[...] = 255  # a copy: the class data is untouched
    assert data.images.max() == 9


def test_episodes_seeded_and_cover_all_images():
    data = make_class()
    draw = lambda seed: sample_episode(np.random.default_rng(seed), data, 1, 5)  # noqa: E731
    np.testing.assert_array_equal(draw(7).query_images, draw(7).query_images)
    rng = np.random.default_rng(1)
    seen = {int(sample_episode(rng, data, 1, 5).support_images[0, 0, 0, 0]) for _ in range(200)}
    assert seen == set(range(10))  # not the "first n records" of the reference


def test_episode_errors():
    data = make_class(n=4)
    with pytest.raises(ValueError, match="'bus' has 4 pairs.*3 \\+ 2 = 5"):
        sample_episode(np.random.default_rng(0), data, 3, 2)
    with pytest.raises(ValueError, match="num_support"):
        sample_episode(np.random.default_rng(0), data, 0, 2)


def test_mini_batches_without_replacement_walk_reshuffled_passes():
    rng = np.random.default_rng(0)
    batches = mini_batch_indices(rng, num_examples=5, batch_size=8, num_batches=5)
    assert batches.shape == (5, 8) and batches.dtype == np.int64
    walk = batches.reshape(-1)
    for start in range(0, 40, 5):  # every consecutive block of 5 is one full pass
        assert sorted(walk[start:start + 5]) == [0, 1, 2, 3, 4]
    assert len(set(batches[0])) == 5  # 5 + 3: duplicates inside a batch, as in the reference
    np.testing.assert_array_equal(
        batches, mini_batch_indices(np.random.default_rng(0), 5, 8, 5))


def test_mini_batches_partial_pass_and_smaller_batch():
    batches = mini_batch_indices(np.random.default_rng(2), num_examples=10, batch_size=3,
                                 num_batches=3)
    assert len(set(batches.reshape(-1))) == 9  # 9 of one pass: no repeats before it is used up


def test_mini_batches_with_replacement():
    rng = np.random.default_rng(0)
    batches = mini_batch_indices(rng, 10, 4, 50, replacement=True)
    assert batches.shape == (50, 4)
    assert all(len(set(b)) == 4 for b in batches)  # distinct inside a batch
    assert len({tuple(b) for b in batches}) > 40    # independent draws
    with pytest.raises(ValueError, match="batch_size must be <= num_examples"):
        mini_batch_indices(rng, 3, 4, 1, replacement=True)
    assert mini_batch_indices(rng, 3, 2, 0).shape == (0, 2)
