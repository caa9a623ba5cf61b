"""Meta-transfer learning as MTL-Segmentation runs it, at 32 px: pre-train a K-class U-Net on a
separate multi-class dataset (MTL-Segmentation's COCO layout, and COCO-Stuff's), meta-train on
FSS-layout
shards with --way 2, meta-evaluate; and MTL-Segmentation's own flag names and folders."""
import json
import os

import numpy as np
import pytest

from args import parse_args
from data.demo import make_demo_dataset
import run_metasegnet
from fss_1000_image_to_tfrecord import convert

from models.build import build_model
from models.mtl import set_mtl_mode
from modes.mtl import _base_kernels, _unet_config
from report.logs import CSV_NAME, read_log
from tests.fixtures.multiclass import make_coco_stuff, make_seed_coco, make_seed_fewshot

SMALL = ["--image_size", "32", "--n_unet_encoding_stacks", "2",
         "--start_num_feature_maps_power", "3", "--seed", "1"]
PRE = ["--phase", "pre_train", "--pre_max_epoch", "6", "--pre_batch_size", "4",
       "--pre_lr", "0.05", "--loss_name", "ce_dice"]
META = ["--way", "2", "--shot", "2", "--train_query", "1", "--val_query", "1",
        "--update_step", "2", "--monitor_tasks", "1", "--loss_name", "ce_dice"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_coco_data")
    make_demo_dataset(str(root / "fss"), num_classes=6, images_per_class=5, image_size=32, seed=0)
    names = sorted(os.listdir(root / "fss"))
    names = [n for n in names if not n.startswith(".")]
    # MTL-Segmentation's FewShotPreprocessing.py folders, with a class-level split, converted to
    # shards.
    make_seed_fewshot(root / "fss", root / "seed_fss",
                      {"train": names[:3], "val": names[3:4], "test": names[4:]})
    convert(str(root / "seed_fss"), str(root / "shards"), image_size=32, log=None)
    return {"coco": make_seed_coco(root / "coco", num_classes=3, counts=(24, 8)),
            "stuff": make_coco_stuff(root / "stuff", num_classes=4, counts=(24, 8)),
            "shards": str(root / "shards"), "names": names}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Seed COCO layout: all three phases; COCO-Stuff: pre-training only."""
    out = {}
    for name, dataset, k in (("coco", "COCO", "3"), ("stuff", "COCOStuff", "4")):
        run_dir = tmp_path_factory.mktemp(f"run_{name}")
        out[name] = run_dir
        assert run_metasegnet.main([*SMALL, *PRE, "--dataset", dataset, "--dataset_dir",
                                    data[name], "--num_classes", k,
                                    "--checkpoint", str(run_dir)]) == 0
    run_dir = out["coco"]
    assert run_metasegnet.main([*SMALL, *META, "--phase", "meta_train", "--mdataset_dir",
                                data["shards"], "--init_weights", str(run_dir / "pre_train"),
                                "--max_epoch", "2", "--num_batch", "2",
                                "--checkpoint", str(run_dir)]) == 0
    assert run_metasegnet.main([*SMALL, *META, "--phase", "meta_eval", "--mdataset_dir",
                                data["shards"], "--eval_weights", str(run_dir / "meta_train"),
                                "--init_weights", str(run_dir / "pre_train"), "--teshot", "2",
                                "--test_query", "2", "--eval-samples", "1",
                                "--serially_eval_all_test_tasks",
                                "--checkpoint", str(run_dir)]) == 0
    return out


@pytest.mark.parametrize("name", ["coco", "stuff"])
def test_pre_training_learns_the_classes_better_than_a_constant(runs, name):
    with open(runs[name] / "pre_train" / "best.json") as f:
        best = json.load(f)
    assert best["num_classes"] == {"coco": 3, "stuff": 4}[name]
    assert best["val_miou"] > best["constant_prediction_val_miou"] + 0.1
    rows = read_log(str(runs[name] / "pre_train" / CSV_NAME))
    assert [r["meta_iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["val_loss"]) for r in rows)
    assert os.path.isfile(runs[name] / "pre_train" / "pre_train_curves.png")


def test_meta_training_reinitialises_the_head_and_keeps_base_kernels(runs, data, capsys):
    run_dir = runs["coco"]
    cfg = parse_args([*SMALL, *META, "--phase", "meta_train", "--mdataset_dir", data["shards"],
                      "--init_weights", str(run_dir / "pre_train"), "--checkpoint",
                      str(run_dir)])
    assert cfg.model.num_classes == 2 and cfg.mtl.way == 2
    # the K-class pre-training: every base kernel equals the meta-trained model's frozen one
    unet = build_model(_unet_config(cfg, 3))
    unet.load_weights(str(run_dir / "pre_train" / "best.weights.h5"))
    mtl = build_model(cfg.model)
    set_mtl_mode(mtl, "meta_transfer")
    from storage import checkpoint
    checkpoint.load_checkpoint(str(run_dir / "meta_train"), {"model": list(mtl.variables)})
    source = {v.path.replace("unet/", ""): v.numpy() for v in unet.variables}
    for v in _base_kernels(mtl):
        np.testing.assert_array_equal(v.numpy(), source[v.path.replace("mtl_unet/", "")])
    assert mtl.get_layer("final_layer_weights").kernel.shape[-1] == 2
    assert unet.get_layer("final_layer_weights").kernel.shape[-1] == 3
    # the meta-val curves and the meta-train curves are in the phase folder
    for png in ("meta_train_curves.png", "meta_val_curves.png"):
        assert os.path.isfile(run_dir / "meta_train" / png)
    rows = read_log(str(run_dir / "meta_train" / CSV_NAME))
    assert any(np.isfinite(r["val_loss"]) for r in rows)


def test_the_split_comes_from_the_seed_folders(runs, data):
    with open(os.path.join(data["shards"], "manifest.json")) as f:
        split = json.load(f)["split"]
    names = data["names"]
    assert split == {"train": names[:3], "val": names[3:4], "test": names[4:]}
    with open(runs["coco"] / "meta_eval" / "meta-test_results.json") as f:
        results = json.load(f)
    assert sorted(results["per_task"]) == names[4:]
    assert 0.0 <= results["mean_iou"] <= 1.0 and "pretrained_fine_tuned" in results
    with open(runs["coco"] / "meta_train" / "classes.json") as f:
        assert json.load(f)["trained_on"] == names[:3]


def test_the_seeds_command_lines_parse_to_its_defaults(data, tmp_path):
    # ahirsharan/MTL-Segmentation main.py: --phase selects the U-Net, --way 2, --dataset COCO
    pre = parse_args(["--model_type", "UNet", "--dataset", "COCO", "--phase", "pre_train",
                      "--seed", "0", "--gpu", "1", "--dataset_dir", data["coco"],
                      "--num_classes", "5", "--pre_max_epoch", "1", "--pre_batch_size", "4",
                      "--pre_lr", "0.1", "--pre_gamma", "0.2", "--pre_step_size", "20",
                      "--pre_custom_momentum", "0.9", "--pre_custom_weight_decay", "0.0005"])
    assert (pre.model.model_name, pre.model.num_classes, pre.mtl.dataset) == ("mtl_unet", 5,
                                                                              "COCO")
    meta = parse_args(["--phase", "meta_train", "--mdataset_dir", data["shards"],
                       "--init_weights", "x", "--meta_label", "exp1", "--max_epoch", "1"])
    assert (meta.data.data_dir, meta.mtl.way, meta.model.num_classes) == (data["shards"], 2, 2)
    assert parse_args(["--phase", "meta_eval", "--way", "1"]).mtl.way == 2  # alias
    with pytest.raises(SystemExit):
        parse_args(["--phase", "meta_train", "--way", "3"])


def test_raw_seed_folders_as_mdataset_dir_say_convert_first(data, tmp_path, capsys):
    raw = make_seed_fewshot(os.path.join(os.path.dirname(data["shards"]), "fss"),
                            tmp_path / "raw", {"train": data["names"][:2]})
    status = run_metasegnet.main([*SMALL, *META, "--phase", "meta_train", "--mdataset_dir", raw,
                                  "--init_weights", "x", "--checkpoint", str(tmp_path / "r")])
    assert status == 2 and "fss_1000_image_to_tfrecord.py" in capsys.readouterr().err


def test_a_refused_rerun_of_a_finished_pre_training_writes_nothing(runs, data, tmp_path, capsys):
    pre_train = runs["coco"] / "pre_train"
    before = {name: (pre_train / name).read_bytes() for name in os.listdir(pre_train)
              if (pre_train / name).is_file()}
    common = [*SMALL, *PRE, "--checkpoint", str(runs["coco"])]
    # a mistyped data folder, and another dataset with another loss and learning rate
    for flags, message in (
            (["--dataset", "COCO", "--dataset_dir", str(tmp_path / "typo"), "--num_classes", "3"],
             "does not exist"),
            (["--dataset", "COCOStuff", "--dataset_dir", data["stuff"], "--num_classes", "4",
              "--loss_name", "cross_entropy", "--pre_lr", "0.2"],
             "mtl.dataset: checkpoint 'COCO', this run 'COCOStuff'")):
        assert run_metasegnet.main([*common, *flags]) == 2
        assert message in capsys.readouterr().err
        after = {name: (pre_train / name).read_bytes() for name in os.listdir(pre_train)
                 if (pre_train / name).is_file()}
        assert after == before


def test_more_than_255_classes_are_refused_as_255_marks_unlabelled_pixels(capsys):
    for dataset in ("COCO", "COCOStuff"):
        with pytest.raises(SystemExit) as e:
            parse_args(["--phase", "pre_train", "--dataset", dataset, "--dataset_dir", "x",
                        "--num_classes", "256"])
        assert e.value.code == 2
        assert "--num_classes must be in [2, 255]" in capsys.readouterr().err
    assert parse_args(["--phase", "pre_train", "--dataset", "COCO", "--dataset_dir", "x",
                       "--num_classes", "255"]).model.num_classes == 255
