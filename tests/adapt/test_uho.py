"""UHO search, early stopper, results CSV (resume) and plot, on a synthetic objective (no TF)."""
import csv
import logging
import math

import numpy as np
import pytest
from PIL import Image

from adapt.config import UHOConfig
from adapt.early_stopping import EarlyStopper
from adapt.uho import optimize_update_hyperparams, search_dimensions
from adapt.uho_csv import COLUMNS, read_rows, results_csv_path
from report.plots import plot_uho_search, uho_config_summary

TASKS = ("cat", "dog", "bus")
BASE = {"lr": 1e-3, "drop_rate": 0.5, "aug_rate": 0.5, "inner_batch_size": 8}
BEST_LR = 0.01


def _curve(params, task, step):
    """Synthetic query IoU after `step` steps: peaks at lr = BEST_LR, at a task-dependent step."""
    peak_step = {"cat": 10, "dog": 20, "bus": 30}[task]
    lr_term = (math.log(params["lr"] / BEST_LR)) ** 2
    drop_term = (params["drop_rate"] - 0.3) ** 2 + (params["aug_rate"] - 0.6) ** 2
    batch_term = (math.log2(params["inner_batch_size"]) - 2) ** 2 * 0.01
    return 0.9 - 0.02 * lr_term - drop_term - batch_term - 1e-4 * (step - peak_step) ** 2


class SyntheticAdapt:
    """adapt_task over `_curve`, with the real EarlyStopper; counts calls and can crash."""

    def __init__(self, crash_after=None, patience=5, max_steps=40):
        self.calls = []
        self.crash_after = crash_after
        self.patience, self.max_steps = patience, max_steps

    def __call__(self, params, task, repetition, steps):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls.append((dict(params), task, repetition, steps))
        if steps is not None:
            return steps, _curve(params, task, steps)
        stopper = EarlyStopper(patience=self.patience)
        for step in range(1, self.max_steps + 1):
            if stopper.update(_curve(params, task, step), step):
                break
        return stopper.result()


def test_early_stopper_patience_and_best():
    stopper = EarlyStopper(patience=2)
    metrics = [0.1, 0.3, 0.2, 0.3, 0.25]
    stops = [stopper.update(m, i + 1) for i, m in enumerate(metrics)]
    # 0.3 at step 2 is best; 0.2, 0.3 (not strictly better), 0.25 are 3 > patience misses.
    assert stops == [False, False, False, False, True]
    assert stopper.result()[0] == 2 and stopper.result()[1] == pytest.approx(0.3)
    stopper.update(0.9, 6)  # a later improvement (were the caller to go on) becomes the best
    assert stopper.result() == (6, 0.9)


def test_early_stopper_min_steps():
    stopper = EarlyStopper(patience=0, min_steps=3)
    # Within min_steps the latest metric is the best, whatever its value, and no stop happens.
    assert not any(stopper.update(m, s) for s, m in [(1, 0.9), (2, 0.1), (3, 0.2)])
    assert stopper.result() == (3, 0.2)
    assert stopper.update(0.1, 4)  # patience 0: the first miss stops
    assert stopper.result() == (3, 0.2)
    with pytest.raises(RuntimeError):
        EarlyStopper().result()


def test_search_dimensions_drop_fixed_ranges():
    dims = search_dimensions({"lr": (1e-4, 1e-2), "drop_rate": (0.2, 0.2),
                              "aug_rate": (0.0, 1.0), "inner_batch_size": (2, 16)})
    assert [d.name for d in dims] == ["lr", "aug_rate", "inner_batch_size"]
    assert dims[0].prior == "log-uniform" and dims[1].prior == "uniform"
    assert dims[2].bounds == (2, 16)


def test_lr_search_finds_optimum_and_writes_rows(tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="absl")
    monkeypatch.setattr(logging.getLogger("absl"), "propagate", True)  # to caplog's handler
    cfg = UHOConfig(num_configs_to_sample=12, lr_range=(1e-4, 1.0), max_steps=40)
    csv_path = results_csv_path(str(tmp_path), cfg.results_csv_name, shots=5)
    assert csv_path.endswith("val-set_hyper_param_search_results_5-shot.csv")
    adapt = SyntheticAdapt()
    result = optimize_update_hyperparams(adapt, TASKS, cfg, BASE, csv_path, seed=1)
    assert result.num_configs == 12
    # Long searches report as they go: one line per configuration and a progress bar.
    captured = capsys.readouterr()
    assert caplog.text.count("UHO round 0 config ") == 12 and "UHO best: " in caplog.text
    assert f"UHO adaptations {12 * len(TASKS)}/{12 * len(TASKS)}" in captured.err
    # Only lr is searched: the other dimensions keep the base setting.
    assert (result.best.drop_rate, result.best.aug_rate, result.best.inner_batch_size) == (0.5, 0.5, 8)
    assert abs(math.log10(result.best.lr / BEST_LR)) < 0.5
    # Per-task best steps are 10, 20, 30 -> median 20.
    assert result.best.steps == 20
    with open(csv_path, newline="") as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == COLUMNS and len(lines) == 1 + 12 * len(TASKS)
    rows = read_rows(csv_path)
    assert {r.task for r in rows} == set(TASKS)
    best_rows = [r for r in rows if r.lr == result.best.lr]
    assert np.mean([r.iou for r in best_rows]) == pytest.approx(result.best_mean_iou)
    # The plot exists and is a real PNG.
    png = plot_uho_search(rows, str(tmp_path / "uho.png"))
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_all_searched_dimensions_are_returned(tmp_path):
    cfg = UHOConfig(num_configs_to_sample=14, lr_range=(1e-3, 0.1), drop_rate_range=(0.05, 0.8),
                    aug_rate_range=(0.1, 1.0), batch_size_range=(2, 16), max_steps=40)
    result = optimize_update_hyperparams(SyntheticAdapt(), TASKS, cfg, BASE,
                                         str(tmp_path / "r.csv"), seed=0)
    best = result.best
    assert best.drop_rate != BASE["drop_rate"] and 0.05 <= best.drop_rate <= 0.8
    assert best.aug_rate != BASE["aug_rate"] and 0.1 <= best.aug_rate <= 1.0
    assert 2 <= best.inner_batch_size <= 16 and isinstance(best.inner_batch_size, int)
    # The chosen configuration is the best measured one, not just the last.
    summary = uho_config_summary(result.rows)
    assert result.best_mean_iou == pytest.approx(max(s["mean_iou"] for s in summary))


def test_crash_then_resume_measures_nothing_twice(tmp_path):
    cfg = UHOConfig(num_configs_to_sample=6, lr_range=(1e-4, 1.0), max_steps=40)
    csv_path = str(tmp_path / "r.csv")
    first = SyntheticAdapt(crash_after=10)  # dies inside configuration 4 (3 tasks each)
    with pytest.raises(KeyboardInterrupt):
        optimize_update_hyperparams(first, TASKS, cfg, BASE, csv_path, seed=3)
    assert len(read_rows(csv_path)) == 10
    second = SyntheticAdapt()
    result = optimize_update_hyperparams(second, TASKS, cfg, BASE, csv_path, seed=3)
    assert len(first.calls) + len(second.calls) == 6 * len(TASKS)
    # The half-measured configuration is finished with its recorded lr, on the missing tasks only.
    assert [c[1] for c in second.calls[:2]] == ["dog", "bus"]
    assert second.calls[0][0]["lr"] == second.calls[1][0]["lr"] == first.calls[9][0]["lr"]
    rows = read_rows(csv_path)
    assert len(rows) == 18 and result.num_configs == 6
    assert len({(r.config, r.task) for r in rows}) == 18
    # A finished search resumes to the same answer without adapting anything.
    third = SyntheticAdapt()
    again = optimize_update_hyperparams(third, TASKS, cfg, BASE, csv_path, seed=3)
    assert third.calls == [] and again.best == result.best


def test_resume_refuses_a_foreign_file(tmp_path):
    csv_path = str(tmp_path / "r.csv")
    cfg = UHOConfig(num_configs_to_sample=2, lr_range=(1e-4, 1.0), max_steps=10)
    optimize_update_hyperparams(SyntheticAdapt(), TASKS, cfg, BASE, csv_path)
    with pytest.raises(ValueError, match="task 'cat'"):
        optimize_update_hyperparams(SyntheticAdapt(), ("ant",), cfg, BASE, csv_path)
    narrow = UHOConfig(num_configs_to_sample=2, lr_range=(0.5, 0.6), max_steps=10)
    with pytest.raises(ValueError, match="outside this run's range"):
        optimize_update_hyperparams(SyntheticAdapt(), TASKS, narrow, BASE, csv_path)
    with pytest.raises(ValueError, match="fixes aug_rate=0.9"):
        optimize_update_hyperparams(SyntheticAdapt(), TASKS, cfg, {**BASE, "aug_rate": 0.9},
                                    csv_path)
    with open(tmp_path / "other.csv", "w") as f:
        f.write("task_ID,best_num_steps,mIoU,lr\n")
    with pytest.raises(ValueError, match="has columns"):
        read_rows(str(tmp_path / "other.csv"))


def test_median_steps_mode_and_fixed_steps(tmp_path):
    cfg = UHOConfig(num_configs_to_sample=2, lr_range=(1e-3, 0.1), max_steps=40,
                    eval_tasks_with_median_early_stopping_iterations=True)
    adapt = SyntheticAdapt()
    result = optimize_update_hyperparams(adapt, TASKS, cfg, BASE, str(tmp_path / "r.csv"),
                                         repetitions=2)
    rows = result.rows
    assert len(rows) == 2 * 2 * 2 * len(TASKS)  # configs x repetitions x kinds x tasks
    median_rows = [r for r in rows if r.kind == "median_steps"]
    assert {r.best_num_steps for r in median_rows} == {20}
    assert {c[3] for c in adapt.calls} == {None, 20}
    # The objective is the re-evaluated IoU at the median, lower than the per-task best.
    es = np.mean([r.iou for r in rows if r.kind == "early_stopping" and r.config == 0])
    med = np.mean([r.iou for r in median_rows if r.config == 0])
    assert med < es
    # min_steps == max_steps: no early stopping, that fixed count is evaluated.
    fixed = SyntheticAdapt()
    cfg = UHOConfig(num_configs_to_sample=2, min_steps=7, max_steps=7)
    res = optimize_update_hyperparams(fixed, TASKS, cfg, BASE, str(tmp_path / "f.csv"))
    assert {c[3] for c in fixed.calls} == {7} and res.best.steps == 7


def test_outer_rounds_narrow_the_lr_range(tmp_path):
    cfg = UHOConfig(num_configs_to_sample=10, uho_outer_iters=2, lr_range=(1e-5, 10.0),
                    max_steps=40)
    result = optimize_update_hyperparams(SyntheticAdapt(), TASKS, cfg, BASE,
                                         str(tmp_path / "r.csv"), seed=2)
    summary = uho_config_summary(result.rows)
    first = [s for s in summary if s["round"] == 0]
    second = [s for s in summary if s["round"] == 1]
    assert len(first) == len(second) == 10
    top = sorted(first, key=lambda s: -s["mean_iou"])[:2]
    low, high = min(s["lr"] for s in top), max(s["lr"] for s in top)
    assert all(low <= s["lr"] <= high for s in second)
    assert result.best_mean_iou >= max(s["mean_iou"] for s in first)


def test_resume_killed_in_random_initial_phase_is_the_uninterrupted_search(tmp_path):
    cfg = UHOConfig(num_configs_to_sample=6, lr_range=(1e-4, 1.0), max_steps=40)
    whole = optimize_update_hyperparams(SyntheticAdapt(), TASKS, cfg, BASE,
                                        str(tmp_path / "whole.csv"), seed=5)
    csv_path = str(tmp_path / "r.csv")
    # 3 random initial configurations of 3 tasks each: die inside the second one.
    with pytest.raises(KeyboardInterrupt):
        optimize_update_hyperparams(SyntheticAdapt(crash_after=4), TASKS, cfg, BASE, csv_path,
                                    seed=5)
    resumed = optimize_update_hyperparams(SyntheticAdapt(), TASKS, cfg, BASE, csv_path, seed=5)
    assert read_rows(csv_path) == read_rows(str(tmp_path / "whole.csv"))
    assert len({r.lr for r in read_rows(csv_path)}) == 6  # no configuration measured twice
    assert resumed.best == whole.best and resumed.best_mean_iou == whole.best_mean_iou
