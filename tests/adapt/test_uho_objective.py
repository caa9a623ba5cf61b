"""UHO on the real inner loop: early stopping scores every step, leaves the init untouched,
and the best step count reproduces its IoU when re-run as a fixed schedule."""
import dataclasses

import numpy as np
import pytest

from adapt.config import EvalConfig, UHOConfig
from adapt.uho_csv import read_rows
from adapt.uho_objective import apply_update_hyperparams, make_adapt_task, run_uho
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from meta.state import full_state
from tests.fixtures.meta_fixtures import cross_entropy, tiny_model, toy_tasks

BASE = Adaptation(learning_rate=0.01, steps=5, batch_size=4, aug_rate=0.0)


@pytest.fixture(scope="module")
def loop():
    return InnerLoop(tiny_model(dropout=0.0), cross_entropy, BASE, augment=True)


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks(3, n=8)


def _state(loop):
    return [np.array(v.numpy()) for v in full_state(loop.model, [loop.optimizer])]


def test_early_stopping_best_steps_reproduce_their_iou(loop, tasks):
    cfg = UHOConfig(max_steps=12, patience=3)
    adapt_task = make_adapt_task(loop, tasks, sorted(tasks), BASE, cfg,
                                 EvalConfig(shots=3, num_query=4, transductive=True), seed=0)
    params = {"lr": 0.05, "drop_rate": 0.0, "aug_rate": 0.0, "inner_batch_size": 3}
    before = _state(loop)
    steps, best_iou = adapt_task(params, "class1", 0, None)
    assert all(np.array_equal(a, b) for a, b in zip(before, _state(loop)))
    assert 1 <= steps <= 12 and 0.0 <= best_iou <= 1.0
    # Same (task, repetition): the same episode and mini-batches, so the fixed-steps run at the
    # best step count lands on the same IoU.
    fixed_steps, fixed_iou = adapt_task(params, "class1", 0, steps)
    assert fixed_steps == steps and fixed_iou == pytest.approx(best_iou, abs=1e-6)
    assert adapt_task(params, "class1", 0, None) == (steps, pytest.approx(best_iou, abs=1e-6))
    # It is the best over steps: no fixed step count scores higher.
    assert all(adapt_task(params, "class1", 0, s)[1] <= best_iou + 1e-6 for s in (1, 6, 12))


def test_run_uho_writes_outputs_and_applies_every_dimension(loop, tasks, tmp_path):
    cfg = UHOConfig(num_configs_to_sample=3, lr_range=(1e-3, 0.1), aug_rate_range=(0.0, 0.5),
                    batch_size_range=(2, 4), max_steps=4, patience=2, repetitions=1)
    evaluation = EvalConfig(shots=3, num_query=3, transductive=True)
    result = run_uho(loop, tasks, ["class0", "class2"], BASE, cfg, evaluation, seed=0,
                     out_dir=str(tmp_path))
    csv_path = tmp_path / "val-set_hyper_param_search_results_3-shot.csv"
    assert len(read_rows(str(csv_path))) == 3 * 2
    assert (tmp_path / "val-set_hyper_param_search_results_3-shot.png").stat().st_size > 1000
    assert (tmp_path / "uho_best.json").exists()
    adaptation = apply_update_hyperparams(BASE, result.best)
    assert (adaptation.learning_rate, adaptation.steps, adaptation.batch_size, adaptation.aug_rate,
            adaptation.dropout_rate) == (result.best.lr, result.best.steps,
                                         result.best.inner_batch_size, result.best.aug_rate,
                                         result.best.drop_rate)
    with pytest.raises(ValueError, match="learning_rate_scheduler"):
        run_uho(loop, tasks, ["class0"], dataclasses.replace(BASE, scheduler="cosine_anneal"),
                cfg, evaluation, seed=0, out_dir=str(tmp_path))
