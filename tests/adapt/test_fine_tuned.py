"""--save_fine_tuned_checkpoints: one checkpoint per evaluated task that reloads to its IoU."""
import json
import os

import numpy as np
import pytest

from adapt import iou
from adapt.config import EvalConfig
from adapt.evaluate import evaluate, predict_queries
from adapt.fine_tuned import combine_hooks, fine_tuned_dir, load_fine_tuned, make_checkpoint_saver
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks(2, n=8)


def test_fine_tuned_checkpoints_reload_to_their_iou(tasks, tmp_path):
    loop = InnerLoop(tiny_model(seed=0), cross_entropy, Adaptation(learning_rate=0.01))
    episodes = {}

    def remember(name, repetition, episode, predicted, score):
        episodes[(name, repetition)] = episode

    root = str(tmp_path / "fine_tuned")
    hook = combine_hooks(None, remember,
                         make_checkpoint_saver(loop.model, root, "test", json.dumps({})))
    schedule = Adaptation(learning_rate=0.05, steps=4, batch_size=3)
    result = evaluate(loop, tasks, sorted(tasks), schedule,
                      EvalConfig(shots=3, num_query=4, transductive=True, eval_samples=2,
                                 serially_eval_all_test_tasks=True),
                      seed=0, stream=1, split="test", after_adapt=hook)
    assert len(result.scores) == 4
    init = [np.array(v.numpy()) for v in loop.model.variables]

    fresh = InnerLoop(tiny_model(seed=7), cross_entropy, Adaptation(learning_rate=0.01))
    for score in result.scores:
        path = fine_tuned_dir(root, "test", score.name, score.repetition)
        assert os.path.isfile(os.path.join(path, "LAST"))
        state = load_fine_tuned(fresh.model, path)
        assert state["task"] == score.name and state["steps"] == 4
        episode = episodes[(score.name, score.repetition)]
        predicted = iou.foreground(predict_queries(fresh, episode.support_images,
                                                   episode.query_images, True))
        reloaded = iou.iou_per_image(predicted, episode.query_masks)
        np.testing.assert_allclose(reloaded, score.ious, atol=1e-6)
        assert state["iou"] == pytest.approx(score.iou)
    # The adapted weights differ from the init (the evaluation itself restored the init).
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(init, fresh.model.variables))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(init, loop.model.variables))
