"""Every init the tool writes or reads loads through from_checkpoint with the settings it carries:
a joint-training run, the MTL phases' outputs, and the paper's TF1 checkpoint (folder, prefix and
.tar.gz, its architecture read from its variables)."""
import json
import os

import numpy as np
import pytest

from args import parse_args
from baselines.joint_train import joint_train
from models.build import build_model
from models.losses import make_loss
from models.mtl import head_variables
from segmenter import from_checkpoint, resolve_init
from segmenter.inits import PAPER_SOURCE
from storage.tf1_checkpoint import restore_tf1_checkpoint
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from tests.fixtures.meta_fixtures import toy_tasks
from tests.fixtures.tf1_synthetic import pack_tar_gz, write_synthetic_checkpoint
from tests.segmenter.test_segmenter_api import examples

UNET_FLAGS = ["--model_name", "unet", "--image_size", "32", "--n_unet_encoding_stacks", "2",
              "--start_num_feature_maps_power", "2", "--learning-rate", "0.02", "--eval-iters",
              "3", "--eval-batch", "2", "--seed", "4"]


def _fit_and_predict(seg):
    images, masks = examples([(40, 36), (29, 51)])
    losses = seg.fit(images, masks)
    predicted = seg.predict(examples([(45, 33)], seed=2)[0])
    assert predicted[0].shape == (33, 45) and set(np.unique(predicted[0])) <= {0, 255}
    return losses


def test_joint_training_run(tmp_path):
    cfg = parse_args(UNET_FLAGS + ["--joint_train", "--checkpoint", str(tmp_path / "joint")])
    model = build_model(cfg.model)
    loop = InnerLoop(model, make_loss(cfg.loss, model), cfg.adapt)
    joint_train(loop, toy_tasks(2, n=4), ["class0", "class1"], epochs=1,
                training=Adaptation(batch_size=4, learning_rate=0.01, seed=0),
                run_dir=str(tmp_path / "joint"), config_json=cfg.to_json())
    seg = from_checkpoint(str(tmp_path / "joint"))
    assert seg.init.kind == "joint_train" and "joint-training baseline (1 epochs)" in \
        seg.init.trained_on()
    assert (seg.settings.adapt.steps, seg.settings.adapt.learning_rate) == (3, 0.02)
    for a, b in zip(seg.model.variables, model.variables):
        if "dropout" not in a.path:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(_fit_and_predict(seg)) == 3


@pytest.mark.parametrize("phase", ["pre_train", "meta_train", ""])
def test_mtl_phase_outputs_adapt_their_head(mtl_three_phases, phase, tmp_path):
    run_dir, status = mtl_three_phases
    assert status["meta_train"] == 0
    with open(run_dir / "meta_train" / "config.json") as f:
        mtl = json.load(f)["mtl"]
    seg = from_checkpoint(str(run_dir / phase) if phase else str(run_dir))
    expected = {"pre_train": "mtl_pre_train"}.get(phase, "mtl_meta_train")
    assert seg.init.kind == expected
    a = seg.settings.adapt
    assert a.head_only and a.sgd and a.batch_size is None and a.aug_rate == 0
    assert (a.learning_rate, a.steps) == (mtl["base_lr"], mtl["update_step"])
    assert seg.settings.model.model_name == ("unet" if phase == "pre_train" else "mtl_unet")
    head = {id(v) for v in head_variables(seg.model)}
    frozen = [(v, v.numpy()) for v in seg.model.trainable_variables if id(v) not in head]
    before = [v.numpy() for v in head_variables(seg.model)]
    assert len(_fit_and_predict(seg)) == mtl["update_step"]
    assert all(np.array_equal(v.numpy(), value) for v, value in frozen)
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(head_variables(seg.model), before))
    if phase == "meta_train":  # the adapted MTL U-Net reloads as it was saved
        photo = examples([(45, 33)], seed=2)[0]
        again = from_checkpoint(seg.save(str(tmp_path / "adapted")))
        assert again.settings.adapt == seg.settings.adapt
        np.testing.assert_array_equal(again.predict(photo, probabilities=True)[0],
                                      seg.predict(photo, probabilities=True)[0])


@pytest.fixture(scope="module")
def tf1(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf1")
    folder = str(root / "EfficientLab-6-3_FOMAML-star_checkpoint")
    write_synthetic_checkpoint(folder, optimizer="adam", step=49999)
    return folder, pack_tar_gz(folder, str(root / "EfficientLab-6-3_FOMAML-star_checkpoint.tar.gz"))


def test_tf1_settings_are_the_papers(tf1):
    folder, archive = tf1
    for path in (folder, archive, os.path.join(folder, "model.ckpt-49999")):
        init, settings = resolve_init(path)
        assert init.kind == "tf1"
        m, a = settings.model, settings.adapt
        assert (m.model_name, m.image_size, m.feature_extractor_name, m.rsd, m.skip_decoding) == \
            ("efficientlab", 224, "efficientnet-b0", (2, 4), False)
        assert (a.learning_rate, a.steps, a.batch_size, a.sgd, a.aug_rate, a.augmentation,
                a.dropout_rate) == (0.0005, 59, 8, True, 0.5, "paper", 0.5)
        assert (settings.loss.loss_name, settings.loss.l2) == ("bce_dice", True)
        assert settings.sources["steps"] == PAPER_SOURCE
        assert settings.sources["rsd"] == "the TF1 checkpoint's variables"


def test_tf1_archive_loads_every_weight_and_segments(tf1):
    folder, archive = tf1
    seg = from_checkpoint(archive, steps=1, batch_size=2)
    reference = build_model(seg.settings.model)
    restore_tf1_checkpoint(reference, folder, seg.settings.model)
    for a, b in zip(seg.model.variables, reference.variables):
        if "dropout" not in a.path:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(_fit_and_predict(seg)) == 1


def test_tf1_skip_decoding_b3_is_read_from_the_variables(tmp_path):
    folder = str(tmp_path / "skip")
    write_synthetic_checkpoint(folder, feature_extractor_name="efficientnet-b3", rsd=(),
                               skip_decoding=True, optimizer=None)
    _, settings = resolve_init(folder)
    assert (settings.model.feature_extractor_name, settings.model.rsd,
            settings.model.skip_decoding) == ("efficientnet-b3", (), True)
