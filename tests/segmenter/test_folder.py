"""--fine-tune-task: masks at each query's original size, overlays, weights that reload, nothing
written for a bad folder; and the real-photo run through the CLI with the init's own settings,
scored against ground truths given with --query_masks."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from segmenter import settings as settings_lib
from segmenter.api import Segmenter
from segmenter.folder import load_user_task
from segmenter.images import read_rgb
from storage import checkpoint
from tests.fixtures.meta_fixtures import SIZE, cross_entropy, red_square, tiny_model
from tests.fixtures.real_data import missing_reason, real_fewshot_dir

REAL_FEWSHOT = real_fewshot_dir()


def _user_folder(root, sizes):
    """A task folder of red squares; the queries' ground truths in <root>/truth (scoring)."""
    rng = np.random.default_rng(0)
    for part in ("support", "query", "truth"):
        (root / part).mkdir(parents=True)
    for i in range(4):
        image, mask = red_square(rng, 48 + 8 * i, 40)
        Image.fromarray(image).save(root / "support" / f"{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "support" / f"{i}.png")
    for i, (w, h) in enumerate(sizes):
        image, mask = red_square(rng, w, h)
        Image.fromarray(image).save(root / "query" / f"q{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "truth" / f"q{i}.png")
    return root


def _tiny_segmenter(seed=0):
    """The tiny test net with 40 Adam steps at lr 0.05 on batches of 4."""
    settings = settings_lib.from_values(
        {"image_size": SIZE, "model_name": "unet", "learning_rate": 0.05, "steps": 40,
         "batch_size": 4}, {"steps": "the test"})
    loop = InnerLoop(tiny_model(seed=seed, dropout=0.0), cross_entropy, settings.adapt)
    return Segmenter(loop, settings)


def test_fit_then_predict_folder_writes_masks_at_original_size(tmp_path):
    sizes = [(70, 50), (33, 61)]
    folder = _user_folder(tmp_path / "mytask", sizes)
    task = load_user_task(str(folder))
    seg = _tiny_segmenter()
    init = [np.array(v.numpy()) for v in seg.model.variables]
    seg.fit(task.support_images, task.support_masks)
    out, weights = str(folder / "predictions"), str(tmp_path / "weights")
    summary = seg.predict_folder(str(folder / "query"), out, formats=("png", "overlay"),
                                 truth=str(folder / "truth"), progress=False)
    assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == [
        "q0_mask.png", "q0_overlay.png", "q1_mask.png", "q1_overlay.png", "summary.json"]
    for i, (w, h) in enumerate(sizes):
        with Image.open(os.path.join(out, f"q{i}_mask.png")) as im:
            assert im.size == (w, h) and im.mode == "L"
            mask = np.asarray(im)
        assert set(np.unique(mask)) <= {0, 255} and 0.02 < (mask > 0).mean() < 0.9
        with Image.open(os.path.join(out, f"q{i}_overlay.png")) as im:
            assert im.size == (w, h)
    # A red square is easy: 40 steps from scratch find it.
    assert summary["mean_iou"] > 0.5 and summary["steps"] == 40 and summary["warnings"] == []
    with open(os.path.join(out, "summary.json")) as f:
        written = json.load(f)
    assert written["sources"]["steps"] == "the test" and len(written["queries"]) == 2
    assert [q["query"] for q in written["queries"]] == ["q0.jpg", "q1.jpg"]
    # The adapted weights reload and predict what was written.
    seg.save(weights)
    queries = [read_rgb(str(folder / "query" / f"q{i}.jpg")) for i in range(2)]
    fresh = _tiny_segmenter(seed=4)
    checkpoint.load_checkpoint(weights, {"model": list(fresh.model.variables)})
    for a, b in zip(fresh.predict(queries), seg.predict(queries)):
        np.testing.assert_array_equal(a, b)
    seg.reset()  # the init comes back whole
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(init, seg.model.variables))


# ------------------------------------------------------------------ the CLI on real photos
CLI_FLAGS = ["--image_size", "64", "--rsd", "2", "--learning-rate", "0.001", "--eval-batch", "5",
             "--eval-iters", "40", "--seed", "0"]


def _real_class():
    """A class of real_fewshot with 10 pairs (5 support + 5 queries)."""
    for name in sorted(os.listdir(REAL_FEWSHOT)):
        folder = os.path.join(REAL_FEWSHOT, name)
        if os.path.isdir(folder) and len([f for f in os.listdir(folder) if f.endswith(".jpg")]) >= 10:
            return folder
    pytest.skip(f"no class with 10 pairs in {REAL_FEWSHOT}")


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory):
    """An init jointly trained on the real_fewshot classes other than the fine-tuned one.

    A random init is no stand-in: its batch-norm moving statistics describe no image, so its
    inference-mode predictions are constant whatever 40 steps do to the weights.
    """
    if missing_reason():
        pytest.skip(missing_reason())
    import shutil
    from args import parse_args
    from data.tasks import load_tasks
    from fss_1000_image_to_tfrecord import convert
    from baselines.joint_train import joint_train
    from models.build import build_model
    from models.losses import make_loss
    root = tmp_path_factory.mktemp("init")
    target = os.path.basename(_real_class())
    others = root / "others"
    for name in os.listdir(REAL_FEWSHOT):
        if name != target and os.path.isdir(os.path.join(REAL_FEWSHOT, name)):
            shutil.copytree(os.path.join(REAL_FEWSHOT, name), others / name)
    convert(str(others), str(root / "shards"), image_size=64, log=None)
    tasks = load_tasks(str(root / "shards"), 64)
    run = str(root / "run")
    cfg = parse_args(CLI_FLAGS + ["--checkpoint", run])
    model = build_model(cfg.model)
    loop = InnerLoop(model, make_loss(cfg.loss, model), cfg.adapt)
    joint_train(loop, tasks, sorted(tasks), epochs=4,
                training=Adaptation(batch_size=8, learning_rate=0.003, seed=0),
                run_dir=str(root / "joint"), config_json=cfg.to_json())
    # ~80 steps leave the moving statistics (momentum 0.99) far from the data's; a long
    # training run would settle them, training-mode passes at momentum 0.9 do so in 40 batches.
    import keras
    from models.layers import leaf_layers
    norms = [l for l in leaf_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.9
    images = np.concatenate([tasks[n].images for n in sorted(tasks)]).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(40):
        model(images[rng.choice(len(images), 8, replace=False)], training=True)
    for layer in norms:
        layer.momentum = 0.99
    checkpoint.save_checkpoint(run, 0, {"model": list(model.variables)}, rng_state=None,
                               config_json=cfg.to_json())
    return run


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_cli_fine_tune_task_on_real_photos(init_checkpoint, tmp_path, capsys):
    from run_metasegnet import main
    source = _real_class()
    folder = tmp_path / os.path.basename(source)
    (folder / "support").mkdir(parents=True)
    (folder / "query").mkdir()
    stems = sorted((f[:-4] for f in os.listdir(source) if f.endswith(".jpg")), key=int)[:10]
    for i, stem in enumerate(stems):
        part = "support" if i < 5 else "query"
        for ext in (".jpg", ".png") if part == "support" else (".jpg",):
            with open(os.path.join(source, stem + ext), "rb") as f:
                (folder / part / (stem + ext)).write_bytes(f.read())
    weights = str(tmp_path / "adapted")
    # The init's config.json holds its size, decoder and schedule: no other flag is needed
    # (--query_masks only scores the result).
    assert main(["--checkpoint", init_checkpoint, "--fine-tune-task", str(folder),
                 "--fine-tuned-checkpoint", weights, "--query_masks", source]) == 0
    out = folder / "predictions"
    with open(out / "summary.json") as f:
        summary = json.load(f)
    for stem in stems[5:]:
        with Image.open(os.path.join(source, stem + ".jpg")) as im:
            size = im.size
        with Image.open(out / f"{stem}_mask.png") as im:
            assert im.size == size  # the query's original size, not the model's 64 px
            mask = np.asarray(im) > 0
        assert 0.01 < mask.mean() < 0.95, f"trivial mask for query {stem}: {mask.mean():.3f}"
    assert summary["steps"] == 40 and len(summary["queries"]) == 5
    assert checkpoint.read_state(weights)["task"] == folder.name
    printed = capsys.readouterr().out
    assert "Wrote the masks (png) of 5 image(s)" in printed and "mean IoU" in printed
    assert f"Init {init_checkpoint}: a joint-training baseline" not in printed  # a saved run
    assert f"Init {init_checkpoint}: Reptile, 0 meta-iterations" in printed
    assert "overrides" not in printed


def test_cli_bad_folder_names_the_file_and_writes_nothing(tmp_path, capsys):
    from args import parse_args
    from models.build import build_model
    from run_metasegnet import main
    init_checkpoint = str(tmp_path / "init")
    cfg = parse_args(CLI_FLAGS + ["--checkpoint", init_checkpoint])
    checkpoint.save_checkpoint(init_checkpoint, 0, {"model": list(build_model(cfg.model).variables)},
                               rng_state=None, config_json=cfg.to_json())
    folder = _user_folder(tmp_path / "bad", [(40, 40)])
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "support" / "0.png")
    assert main(["--checkpoint", init_checkpoint, "--fine-tune-task", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "0.png" in err and "same size" in err
    assert sorted(os.listdir(folder)) == ["query", "support", "truth"]
