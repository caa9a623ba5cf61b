"""scripts/demo_summary.py: the demo's closing table from the runs' meta-test_results.json."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("demo_summary",
                                               os.path.join(ROOT, "scripts", "demo_summary.py"))
demo_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_summary)


# The results' config as this version writes it, and as versions before the one adaptation type.
LAYOUTS = {"now": {"eval": {"shots": 5}, "adapt": {"steps": 20}},
           "e439d4b": {"eval": {"shots": 5, "eval_iters": 20}}}


def _result(run_dir, mean_iou, random_iou=None, layout="now"):
    os.makedirs(run_dir)
    result = {"split": "test", "mean_iou": mean_iou, "ci95": 0.05, "class_accumulated_iou": 0.4,
              "num_task_samples": 20, "num_classes": 20, "meta_iterations": 100,
              "wall_seconds": 300.0, "config": LAYOUTS[layout]}
    if random_iou is not None:
        result["random_init"] = {**result, "mean_iou": random_iou}
    with open(os.path.join(run_dir, demo_summary.RESULTS_NAME), "w") as f:
        json.dump(result, f)
    return str(run_dir)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_table_has_a_row_per_run_and_the_shared_random_init(tmp_path, capsys, layout):
    runs = [_result(tmp_path / "reptile", 0.4796, random_iou=0.0006, layout=layout),
            _result(tmp_path / "fomaml_star", 0.4494, layout=layout)]
    assert demo_summary.main(runs) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["reptile"][2] == "0.4796" and rows["fomaml_star"][2] == "0.4494"
    assert rows["random"][3] == "0.0006" and rows["reptile"][-1] == "5.0m"
    assert "Held-out test classes: 20, 5-shot, 20 adaptation steps" in out


def test_unfinished_run_is_named(tmp_path):
    with pytest.raises(SystemExit, match="meta-test_results.json is missing"):
        demo_summary.main([str(tmp_path / "never_ran")])
