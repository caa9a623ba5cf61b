"""One Segmenter, many threads: each call holds its lock, so calls never interleave inside the
model; a thread whose adapted weights another thread's fit replaced is refused, never handed the
other thread's predictions; holding `seg.lock` around a fit and a predict keeps them together;
and a fit in one thread serves predictions in many."""
import threading

import numpy as np
import pytest

from errors import UserError
from segmenter import from_checkpoint
from tests.segmenter.test_segmenter_api import examples, run  # noqa: F401

ROUNDS = 4


@pytest.fixture(scope="module")
def seg(run):  # noqa: F811
    return from_checkpoint(run, steps=6)


@pytest.fixture(scope="module")
def tasks(seg):
    """Two tasks whose adapted weights segment the same query differently, and each one's
    masks computed alone."""
    images, masks = examples([(40, 40), (50, 30), (36, 44)])
    query = examples([(48, 40)], seed=9)[0][0]
    out = {"a": (images, masks), "b": (images, [255 - m for m in masks])}  # object <-> background
    expected = {}
    for name, (x, y) in out.items():
        seg.fit(x, y)
        expected[name] = seg.predict(query)
    assert not np.array_equal(expected["a"], expected["b"])
    return out, query, expected


def _run(seg, tasks, *, hold: bool):
    """Two threads, each fitting its task and predicting the query ROUNDS times."""
    data, query, expected = tasks
    outcomes = {name: [] for name in data}
    start = threading.Barrier(len(data))

    def work(name):
        start.wait()
        for _ in range(ROUNDS):
            try:
                if hold:
                    with seg.lock:
                        seg.fit(*data[name])
                        outcomes[name].append(seg.predict(query))
                else:
                    seg.fit(*data[name])
                    outcomes[name].append(seg.predict(query))
            except UserError as e:
                outcomes[name].append(e)

    threads = [threading.Thread(target=work, args=(name,)) for name in data]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, expected


def test_a_thread_never_gets_another_threads_predictions(seg, tasks):
    outcomes, expected = _run(seg, tasks, hold=False)
    for name, results in outcomes.items():
        assert len(results) == ROUNDS
        for result in results:
            if isinstance(result, UserError):
                assert "another thread's fit or reset replaced the weights" in str(result)
                assert "with segmenter.lock" in str(result)
            else:
                np.testing.assert_array_equal(result, expected[name])


def test_holding_the_lock_keeps_each_fit_with_its_predict(seg, tasks):
    outcomes, expected = _run(seg, tasks, hold=True)
    for name, results in outcomes.items():
        assert len(results) == ROUNDS
        for result in results:
            np.testing.assert_array_equal(result, expected[name])


def test_a_replaced_fit_is_refused_and_a_new_one_is_used(seg, tasks):
    data, query, expected = tasks
    fitted, replaced = threading.Event(), threading.Event()
    seen = {}

    def first():
        seg.fit(*data["a"])
        fitted.set()
        replaced.wait()
        with pytest.raises(UserError, match="another thread's fit"):
            seg.predict(query)
        with pytest.raises(UserError, match="another thread's fit"):
            seg.save("never-written")
        seg.fit(*data["a"])  # its own again
        seen["first"] = seg.predict(query)

    thread = threading.Thread(target=first)
    thread.start()
    fitted.wait()
    seg.fit(*data["b"])
    replaced.set()
    thread.join()
    np.testing.assert_array_equal(seen["first"], expected["a"])


def test_one_fit_serves_predictions_in_many_threads(seg, tasks):
    data, query, expected = tasks
    seg.fit(*data["b"])
    results = []

    def predict():
        for _ in range(ROUNDS):
            results.append(seg.predict(query))

    threads = [threading.Thread(target=predict) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 * ROUNDS
    for result in results:
        np.testing.assert_array_equal(result, expected["b"])
