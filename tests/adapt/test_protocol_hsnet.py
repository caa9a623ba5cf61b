"""The HSNet FSS-1000 protocol: one episode per image, class-accumulated mIoU and FB-IoU."""
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from adapt.evaluate import EvalResult
from adapt.protocol_hsnet import HSNetResult, check_classes, evaluate_hsnet, num_queries
from args import parse_args
from data.episodes import supports_per_query
from data.tasks import ClassData
from meta.adaptation import Adaptation
from models.losses import pixel_cross_entropy


class _Counter:
    def __init__(self):
        self.saves = self.restores = 0

    def save(self):
        self.saves += 1

    def restore(self):
        self.restores += 1


class FakeLoop:
    """Stands in for meta.inner.InnerLoop: its prediction of an image is fixed by the image's id.

    Image j carries its id in its pixels (see _classes), so the loop can tell which images it
    adapts on and which it predicts; `predictions[j]` is the {0,1} foreground it returns for image j.
    """

    def __init__(self, predictions):
        self.predictions = predictions
        self.full_state = _Counter()
        self.adapted_on = []  # per train step: ids of the support images it was given
        self.predicted = []  # per predict call: ids of the images
        self.loss_fn = lambda y_true, y_pred: ops.mean(pixel_cross_entropy(y_true, y_pred))

    def check(self, adaptation):
        pass

    def set_dropout_rate(self, rate):
        pass

    def reset_optimizer(self):
        pass

    def train_step(self, images, masks, indices, learning_rate, aug_rate, seed):
        self.adapted_on.append(sorted(set(_ids(images.numpy()))))
        return tf.constant(0.0)

    def train_steps(self, images, masks, indices, learning_rates, aug_rate, seeds):
        return tf.stack([self.train_step(images, masks, i, lr, aug_rate, s)
                         for i, lr, s in zip(indices, learning_rates, seeds)])

    def predict(self, images):
        ids = _ids(np.asarray(images))
        self.predicted.append(ids)
        foreground = np.stack([self.predictions[j] for j in ids]).astype(np.float32)
        return tf.constant(np.stack([1 - foreground, foreground], axis=-1))


def _ids(images):
    """Ids of images made by _classes: red = id // 256, green = id % 256."""
    return [int(r) * 256 + int(g) for r, g in images[:, 0, 0, :2]]


def _classes(masks_by_class, size):
    """ClassData whose image j (counted over all classes) carries j in every pixel (see _ids)."""
    tasks, j = {}, 0
    for name, masks in masks_by_class.items():
        ids = np.arange(j, j + len(masks))
        j += len(masks)
        images = np.zeros((len(ids), size, size, 3), np.uint8)
        images[..., 0] = (ids // 256)[:, None, None]
        images[..., 1] = (ids % 256)[:, None, None]
        tasks[name] = ClassData(name=name, images=images,
                                masks=np.asarray(masks, np.uint8).reshape(len(ids), size, size))
    return tasks


SCHEDULE = Adaptation(learning_rate=0.1, steps=2, batch_size=2)


def _episodes(loop):
    """(support ids, query ids) of each episode, from the FakeLoop's records."""
    return [(loop.adapted_on[2 * e], loop.predicted[e]) for e in range(len(loop.predicted))]


# ------------------------------------------------------------------------------- sampling
def test_supports_per_query_every_image_once_never_its_own_support():
    rows = supports_per_query(np.random.default_rng(3), num_images=10, num_support=5)
    assert rows.shape == (10, 5) and rows.dtype == np.int64
    for query, support in enumerate(rows):
        assert query not in support and len(set(support)) == 5
        assert support.min() >= 0 and support.max() <= 9
    np.testing.assert_array_equal(rows, supports_per_query(np.random.default_rng(3), 10, 5))
    assert not np.array_equal(rows, supports_per_query(np.random.default_rng(4), 10, 5))
    # Uniform over the other images: over many draws, query 0's supports cover all 9 others.
    rng = np.random.default_rng(0)
    seen = {int(s) for _ in range(100) for s in supports_per_query(rng, 10, 1)[0]}
    assert seen == set(range(1, 10))


def test_supports_per_query_errors_name_the_problem():
    with pytest.raises(ValueError, match="class has 5 images"):
        supports_per_query(np.random.default_rng(0), 5, 5)
    with pytest.raises(ValueError, match="must be >= 1"):
        supports_per_query(np.random.default_rng(0), 5, 0)
    tasks = _classes({"cat": np.zeros((4, 1)), "dog": np.zeros((3, 1))}, size=1)
    with pytest.raises(ValueError, match=r"'dog' \(3\).*Lower --shots"):
        check_classes(tasks, ["cat", "dog"], shots=3)
    check_classes(tasks, ["cat"], shots=3)


def test_fss1000_size_gives_2400_queries_each_image_once():
    tasks = _classes({f"class{c:03d}": np.zeros((10, 1)) for c in range(240)}, size=1)
    loop = FakeLoop({j: np.zeros((1, 1)) for j in range(2400)})
    result = evaluate_hsnet(loop, tasks, sorted(tasks),
                            Adaptation(learning_rate=0.1, steps=0, batch_size=5),
                            shots=5, transductive=True, seed=0, split="test")
    assert num_queries(tasks, sorted(tasks)) == 2400 == result.num_queries
    queried = [ids[0] for ids in loop.predicted]
    assert sorted(queried) == list(range(2400))  # every image a query exactly once
    assert loop.full_state.saves == loop.full_state.restores == 2400
    assert [len(v) for v in result.per_task.values()] == [10] * 240


def test_episodes_are_seeded_supports_from_the_query_class_never_the_query():
    tasks = _classes({"a": np.zeros((6, 4)), "b": np.zeros((5, 4))}, size=2)
    names = ["a", "b"]

    def run(seed):
        loop = FakeLoop({j: np.zeros((2, 2)) for j in range(11)})
        evaluate_hsnet(loop, tasks, names, SCHEDULE, shots=3, transductive=False, seed=seed,
                       split="test")
        return loop

    loop = run(seed=5)
    episodes = _episodes(loop)
    assert len(episodes) == 11 and len(loop.adapted_on) == 2 * 11  # --eval-iters steps each
    for support, predicted in episodes:
        query = predicted[-1]  # non-transductive: the supports, then the query, in one batch
        same_class = range(0, 6) if query < 6 else range(6, 11)
        assert len(support) == 3 and query not in support and set(support) <= set(same_class)
        assert sorted(predicted[:-1]) == support
    assert sorted(p[-1] for _, p in episodes) == list(range(11))
    assert _episodes(run(seed=5)) == episodes
    assert _episodes(run(seed=6)) != episodes


# -------------------------------------------------------------------------------- metrics
def test_miou_and_fb_iou_match_a_hand_computation():
    # 2x2 masks; ground truth G and the fixed prediction P per image (row-major pixels).
    truth = {"a": [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
             "b": [[0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]]}
    predicted = [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1],
                 [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    # By hand, |P&G| / |P|G| per image: a: 1/2, 1/3, 4/4; b: 0/1, 1/3, 1/2.
    # mIoU: a = (1+1+4)/(2+3+4) = 2/3, b = (0+1+1)/(1+3+2) = 1/3 -> 1/2.
    # Foreground over all 6 queries: 8/15. Background (pixels in neither / in either
    # complement), 24 pixels: |~P&~G| = 2+1+0+3+1+2 = 9, |~P|~G| = 3+3+0+4+3+3 = 16 -> 9/16.
    tasks = _classes({k: np.asarray(v) for k, v in truth.items()}, size=2)
    loop = FakeLoop({j: np.asarray(p).reshape(2, 2) for j, p in enumerate(predicted)})
    result = evaluate_hsnet(loop, tasks, ["a", "b"], SCHEDULE, shots=2, transductive=True,
                            seed=0, split="test")
    assert isinstance(result, HSNetResult) and isinstance(result, EvalResult)
    assert result.class_accumulated_iou == pytest.approx(float(Fraction(1, 2)), abs=1e-12)
    fg, bg = result.foreground_background_iou
    assert fg == pytest.approx(8 / 15, abs=1e-12) and bg == pytest.approx(9 / 16, abs=1e-12)
    assert result.fb_iou == pytest.approx((8 / 15 + 9 / 16) / 2, abs=1e-12)
    # A second computation of the background side straight from the pixels.
    p, g = np.asarray(predicted, bool), np.concatenate([truth["a"], truth["b"]]).astype(bool)
    assert bg == pytest.approx((~p & ~g).sum() / (~p | ~g).sum(), abs=1e-12)
    # The per-query mean (paper-style, each episode one query) is a different number.
    assert result.mean_iou == pytest.approx((1 / 2 + 1 / 3 + 1 + 0 + 1 / 3 + 1 / 2) / 6, abs=1e-6)
    assert result.per_task["a"] == pytest.approx([1 / 2, 1 / 3, 1.0])
    summary = result.summary()
    assert summary["protocol"] == "hsnet" and summary["num_queries"] == 6
    assert summary["shots"] == 2 and summary["fb_iou"] == pytest.approx(result.fb_iou)
    assert summary["class_accumulated_iou"] == pytest.approx(0.5)
    assert EvalResult(split="test", scores=result.scores).summary()["protocol"] == "paper"


def test_a_class_with_nothing_to_find_scores_zero_as_hsnet():
    tasks = _classes({"empty": np.zeros((3, 1)), "full": np.ones((3, 1))}, size=1)
    loop = FakeLoop({j: np.ones((1, 1)) * (j >= 3) for j in range(6)})
    result = evaluate_hsnet(loop, tasks, ["empty", "full"], SCHEDULE, shots=1,
                            transductive=True, seed=0, split="test")
    assert result.class_accumulated_iou == 0.5  # "empty" scores 0 (HSNet), "full" 1
    assert result.foreground_background_iou == (1.0, 1.0)


def test_protocol_flag():
    assert parse_args([]).eval.protocol == "paper"
    assert parse_args(["--protocol", "hsnet"]).eval.protocol == "hsnet"
    with pytest.raises(SystemExit) as e:
        parse_args(["--protocol", "vat"])
    assert e.value.code == 2
