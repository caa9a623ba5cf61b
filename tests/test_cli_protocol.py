"""run_metasegnet.py --protocol hsnet end to end on tiny demo shards (a 1-stack U-Net at 32 px)."""
import json
import os

import pytest

from data.demo import make_demo_dataset
from modes.final_eval import RESULTS_NAME
import run_metasegnet
from fss_1000_image_to_tfrecord import convert


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol_data")
    make_demo_dataset(str(root / "fss"), num_classes=4, images_per_class=7, image_size=32, seed=0)
    convert(str(root / "fss"), str(root / "shards"), image_size=32, log=None)
    return str(root / "shards")


def _argv(shards, run_dir, *extra):
    return ["--data-dir", shards, "--image_size", "32", "--num_test_tasks", "2",
            "--checkpoint", run_dir, "--model_name", "unet", "--n_unet_encoding_stacks", "1",
            "--start_num_feature_maps_power", "2", "--train-shots", "2", "--inner-iters", "1",
            "--inner-batch", "2", "--meta-iters", "1", "--meta-batch", "1", "--eval-interval", "5",
            "--monitor_tasks", "1", "--eval-iters", "1", "--eval-batch", "2", "--shots", "2",
            "--eval-samples", "1", "--sgd", "--seed", "3", *extra]


def test_hsnet_protocol_scores_every_test_image_once_and_says_so(shards, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_metasegnet.main(_argv(shards, run_dir, "--protocol", "hsnet")) == 0
    out = capsys.readouterr().out
    results = json.load(open(os.path.join(run_dir, RESULTS_NAME)))
    assert results["protocol"] == "hsnet" and results["split"] == "test"
    assert results["num_queries"] == 14 and results["shots"] == 2  # 2 classes x 7 images
    assert sorted(len(v) for v in results["per_task"].values()) == [7, 7]
    assert 0.0 <= results["fb_iou"] <= 1.0 and 0.0 <= results["class_accumulated_iou"] <= 1.0
    assert results["fb_iou"] == pytest.approx(
        (results["foreground_iou"] + results["background_iou"]) / 2)
    assert results["train_tasks"]["protocol"] == "paper"  # the train-task check is unchanged
    assert results["config"]["eval"]["protocol"] == "hsnet"
    line = [l for l in out.splitlines() if l.startswith("Mean IoU over all meta-test tasks: ")]
    assert len(line) == 1 and float(line[0].split(": ")[1]) == pytest.approx(results["mean_iou"])
    assert "Mean of all 14 meta-test task-splits (hsnet protocol)" in out
    assert (f"meta-test under the hsnet protocol (14 queries, each its own 2-shot episode): mIoU "
            f"{results['class_accumulated_iou']:.4f}, FB-IoU {results['fb_iou']:.4f}") in out


def test_hsnet_protocol_with_too_few_images_fails_before_training(shards, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_metasegnet.main(_argv(shards, run_dir, "--protocol", "hsnet", "--shots", "7")) == 2
    err = capsys.readouterr().err
    assert "each class needs >= 8 images" in err and "Lower --shots" in err
    assert not os.path.exists(os.path.join(run_dir, "config.json"))
