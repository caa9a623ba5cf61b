"""Evaluation leaves every variable bit-identical; trace counts stay bounded; plans are seeded."""
import numpy as np
import pytest

from adapt.config import EvalConfig
from adapt.evaluate import EvalResult, TaskScore, evaluate, evaluation_plan
from meta.algorithms import MetaLearner
from meta.config import MetaConfig
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.state import Snapshot, full_state
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks(4, n=9)


@pytest.fixture(scope="module")
def loop():
    return InnerLoop(tiny_model(), cross_entropy, Adaptation(learning_rate=0.01), augment=True)


def _everything(loop):
    return [np.array(v.numpy()) for v in full_state(loop.model, [loop.optimizer])]


def test_full_state_includes_bn_statistics_dropout_seed_and_optimizer_slots(loop):
    paths = [v.path for v in full_state(loop.model, [loop.optimizer])]
    assert any("moving_mean" in p for p in paths) and any("moving_variance" in p for p in paths)
    assert any("seed_generator" in p for p in paths)
    assert any("momentum" in p or "velocity" in p for p in paths)
    assert any(p.endswith("iteration") for p in paths)


def test_snapshot_restore_is_bit_identical(loop):
    snapshot = Snapshot(loop.model.variables)
    before = [np.array(v.numpy()) for v in loop.model.variables]
    snapshot.save()
    for v in loop.model.trainable_variables:
        v.assign(v + 1.0)
    snapshot.restore()
    for a, v in zip(before, loop.model.variables):
        assert np.array_equal(a, v.numpy())


def test_evaluation_leaves_every_variable_bit_identical(loop, tasks):
    schedule = Adaptation(learning_rate=0.05, steps=3, batch_size=4, aug_rate=0.5,
                          dropout_rate=0.2)
    before = _everything(loop)
    result = evaluate(loop, tasks, sorted(tasks), schedule,
                      EvalConfig(shots=3, num_query=5, transductive=True, eval_samples=1,
                                 serially_eval_all_test_tasks=True),
                      seed=0, stream=1, split="test")
    after = _everything(loop)
    assert len(result.scores) == 4 and all(s.steps_taken == 3 for s in result.scores)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    # ... and the adaptation did change things in between: a second run scores the same
    again = evaluate(loop, tasks, sorted(tasks), schedule,
                     EvalConfig(shots=3, num_query=5, transductive=False, eval_samples=1,
                                serially_eval_all_test_tasks=True),
                     seed=0, stream=1, split="test")
    np.testing.assert_allclose(again.task_ious, result.task_ious, atol=1e-6)


def test_inner_step_traced_once_across_a_20_task_run(loop, tasks):
    learner = MetaLearner(loop, MetaConfig(
        algorithm="fomaml", train_shots=7, foml_tail=2,
        inner=Adaptation(learning_rate=0.01, steps=3, batch_size=4, aug_rate=0.5)))
    rng = np.random.default_rng(0)
    names = sorted(tasks)
    for i in range(4):  # 4 meta-iterations x 5 tasks, lr and meta-step changing
        learner.loop.optimizer  # noqa: B018  (same optimizer object throughout)
        learner.meta_step([tasks[names[j % 4]] for j in range(i, i + 5)], rng, 0.1 / (i + 1))
    for lr, shots, batch, rate in ((0.02, 3, 2, 0.5), (0.005, 5, 8, 0.0)):  # new values, shapes
        schedule = Adaptation(learning_rate=lr, steps=2, batch_size=batch, aug_rate=0.0,
                              scheduler="cosine_anneal", dropout_rate=rate)
        evaluate(loop, tasks, names, schedule,
                 EvalConfig(shots=shots, num_query=2, transductive=True, eval_samples=1,
                            serially_eval_all_test_tasks=True), seed=1, stream=2, split="test")
    # without a per-step callback every task's steps are one compiled call (meta.inner)
    assert loop.trace_counts == {"train_step": 0, "train_steps": 1, "predict": 1}
    assert learner._apply.experimental_get_tracing_count() == 1
    assert learner._accumulate.experimental_get_tracing_count() == 1


def test_evaluation_plan_serial_and_random():
    names = ["a", "b", "c"]
    assert evaluation_plan(names, num_samples=2, all_tasks=True, seed=0, stream=1) == \
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    plan = evaluation_plan(names, num_samples=2, all_tasks=False, seed=0, stream=1)
    assert [r for r, _ in plan] == [0, 1] and len({i for _, i in plan}) == 2
    assert plan == evaluation_plan(names, num_samples=2, all_tasks=False, seed=0, stream=1)
    with pytest.raises(ValueError, match="empty"):
        evaluation_plan([], num_samples=1, all_tasks=True, seed=0, stream=1)


def test_eval_result_metrics_by_hand():
    def score(name, rep, inter, union):
        inter, union = np.array(inter), np.array(union)
        return TaskScore(name, rep, (inter + 1e-7) / (union + 1e-7), inter, union, 3)
    result = EvalResult("test", (score("a", 0, [1, 3], [2, 4]), score("a", 1, [0, 2], [2, 2]),
                                 score("b", 0, [5, 0], [10, 5])))
    task = [(0.5 + 0.75) / 2, (0 + 1) / 2, (0.5 + 0) / 2]
    assert result.mean_iou == pytest.approx(np.mean(task))
    assert result.ci95 == pytest.approx(1.96 * np.std(task) / np.sqrt(3))
    assert result.class_accumulated_iou == pytest.approx((6 / 10 + 5 / 15) / 2)
    assert result.per_task == {"a": [pytest.approx(0.625), pytest.approx(0.5)],
                               "b": [pytest.approx(0.25)]}
