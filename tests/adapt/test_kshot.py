"""k-shot learning curves: capped k values, nested supports, early stopping from k = 10,
one CSV row per (model, task, repetition, k), and the plot."""
import csv

import numpy as np
import pytest

from adapt.config import KShotConfig
from adapt.kshot import run_k_shot_experiment, usable_k
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks


def test_usable_k_caps_by_class_size():
    assert usable_k((1, 5, 10, 25), 10, 20) == ([1, 5], 5)  # FSS-1000: 5 test images
    assert usable_k((1, 5, 10, 25), 40, 20) == ([1, 5, 10], 20)
    assert usable_k((1, 5, 10, 25), 16, 4) == ([1, 5, 10], 4)
    with pytest.raises(ValueError, match="k_shot_range"):
        usable_k((5,), 8, 4)


def test_k_shot_curves_same_data_for_every_model(tmp_path):
    tasks = toy_tasks(2, n=16)
    meta = InnerLoop(tiny_model(seed=0), cross_entropy, Adaptation(learning_rate=0.01))
    twin = InnerLoop(tiny_model(seed=0), cross_entropy, Adaptation(learning_rate=0.01))
    cfg = KShotConfig(k_values=(1, 2, 10, 50), num_query=4, max_steps=4, patience=1)
    base = Adaptation(learning_rate=0.05, steps=3, batch_size=4)
    curves = run_k_shot_experiment({"meta-learned": meta, "same init": twin}, tasks,
                                   sorted(tasks), base, cfg, repetitions=1, seed=0,
                                   out_dir=str(tmp_path))
    assert sorted(curves["meta-learned"]) == [1, 2, 10]  # 50 > 16 - 4 images: dropped
    with open(tmp_path / "k-shot-results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3
    steps = {int(r["k"]): int(r["steps"]) for r in rows}
    assert steps[1] == steps[2] == 3 and 1 <= steps[10] <= 4  # eval iters below 10, ES from 10
    # Identical inits on identical splits and mini-batches give identical curves.
    for k in (1, 2, 10):
        np.testing.assert_allclose(curves["meta-learned"][k], curves["same init"][k], atol=1e-6)
    assert (tmp_path / "k-shot-results.png").stat().st_size > 1000
    # An explicit iteration table wins over early stopping.
    table = KShotConfig(k_values=(1, 10), k_shot_iter_range=(2, 5), num_query=4)
    run_k_shot_experiment({"m": meta}, tasks, ["class0"], base, table, repetitions=1, seed=0,
                          out_dir=str(tmp_path / "t"))
    with open(tmp_path / "t" / "k-shot-results.csv", newline="") as f:
        assert [int(r["steps"]) for r in csv.DictReader(f)] == [2, 5]
