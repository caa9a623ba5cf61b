"""The adaptation API on a real meta-training run (the saved U-Net run of tests/fixtures): settings
from the checkpoint, overrides and refusals, fit from the init every time, masks at each image's
size, save / reload / --pretrained, export."""
import json
import os
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from args import parse_args
from errors import UserError
from models.build import build_model
from modes.restore import check_compatible
from segmenter import from_checkpoint, resolve_init
from storage import checkpoint
from tests.fixtures.meta_fixtures import red_squares

FIXTURE_RUN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "run_2026_12")
# The flags the fixture run was trained with (tests/fixtures/README.md): a 2-stack U-Net at 32 px.
MODEL_FLAGS = ["--image_size", "32", "--model_name", "unet", "--n_unet_encoding_stacks", "2",
               "--start_num_feature_maps_power", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A copy of the saved meta-training run (an init is only read, but never risk the fixture)."""
    target = tmp_path_factory.mktemp("init") / "run"
    shutil.copytree(FIXTURE_RUN, target)
    return str(target)


def examples(sizes, seed=0):
    """Red squares on grey noise at the given (width, height) sizes, with 0/255 masks."""
    return red_squares(sizes, seed)


def weights(seg):
    return [np.array(v.numpy()) for v in seg.model.variables]


@pytest.fixture(scope="module")
def seg(run):
    return from_checkpoint(run, steps=4)


def test_settings_come_from_the_checkpoint_and_overrides_win(run):
    with open(os.path.join(run, "ckpt-00000002", "config.json")) as f:
        saved = json.load(f)
    init, settings = resolve_init(run)
    assert init.kind == "meta_train" and init.state["step"] == 2
    assert "FOMAML, 2 meta-iterations on shards" in init.trained_on()
    assert settings.model.image_size == 32 and settings.model.model_name == "unet"
    assert settings.adapt.steps == saved["eval"]["eval_iters"] == 3
    assert settings.adapt.batch_size == saved["eval"]["eval_batch_size"] == 4
    assert settings.adapt.learning_rate == saved["inner"]["learning_rate"] == 0.1
    assert settings.adapt.sgd and settings.adapt.aug_rate == 0.5 and settings.adapt.seed == 1
    assert settings.loss.loss_name == "cross_entropy"
    assert settings.sources["steps"].startswith("config.json of ")
    _, settings = resolve_init(run, {"steps": 7, "learning_rate": 0.01, "image_size": 32})
    assert (settings.adapt.steps, settings.adapt.learning_rate) == (7, 0.01)
    assert settings.sources["steps"] == "given" and settings.sources["batch_size"] != "given"
    assert "steps = 7 (given)" in settings.lines()


def test_refusals_come_before_any_model_is_built(run, monkeypatch):
    import segmenter.api

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")
    monkeypatch.setattr(segmenter.api, "build_model", no_model)
    with pytest.raises(UserError, match=r"image_size 64 contradicts the init .*image_size 32"):
        from_checkpoint(run, image_size=64)
    with pytest.raises(UserError, match=r"--rsd 3 contradicts"):
        from_checkpoint(run, model_name="unet", rsd=(3,), labels={"rsd": "--rsd"})
    with pytest.raises(UserError, match="Unknown setting.*'lr'"):
        from_checkpoint(run, lr=0.1)
    with pytest.raises(UserError, match="steps must be a whole number >= 0"):
        from_checkpoint(run, steps=-1)
    with pytest.raises(UserError, match="holds no init"):
        from_checkpoint(os.path.dirname(run))
    with pytest.raises(UserError, match="does not exist"):
        from_checkpoint(run + "-missing")


def test_fit_starts_from_the_init_every_time_and_masks_keep_each_size(seg):
    init = weights(seg)
    images, masks = examples([(50, 40), (37, 61), (64, 64)])
    losses = seg.fit(images, masks)
    assert losses.shape == (4,) and np.isfinite(losses).all()
    first = weights(seg)
    assert any(not np.array_equal(a, b) for a, b in zip(init, first))
    queries, _ = examples([(70, 45), (33, 90)], seed=1)
    predicted = seg.predict(queries)
    assert [m.shape for m in predicted] == [(45, 70), (90, 33)]
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255} for m in predicted)
    probabilities = seg.predict(queries, probabilities=True)
    for p, m in zip(probabilities, predicted):
        assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
        np.testing.assert_array_equal(np.where(p >= 0.5, 255, 0), m)
    single = seg.predict(Image.fromarray(queries[0]))
    np.testing.assert_array_equal(single, predicted[0])
    # Other examples in between: a fit never continues from the last one.
    seg.fit(*examples([(40, 40), (48, 30)], seed=5))
    assert seg.fit(images, masks).tolist() == losses.tolist()
    for a, b in zip(first, weights(seg)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(seg.predict(queries), predicted):
        np.testing.assert_array_equal(a, b)
    seg.reset()
    for a, b in zip(init, weights(seg)):
        np.testing.assert_array_equal(a, b)


def test_progress_reports_without_changing_the_result(seg):
    images, masks = examples([(40, 40), (50, 30)])
    seg.fit(images, masks)
    plain = weights(seg)
    reports = []
    seg.fit(images, masks, progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (4, 4) and len(reports) > 1
    for a, b in zip(plain, weights(seg)):
        np.testing.assert_array_equal(a, b)
    calls = []
    seg.predict(images * 3, batch_size=2, progress=lambda done, total: calls.append(done))
    assert calls == [2, 4, 6]


def test_warm_up_compiles_once_and_leaves_the_init(run):  # noqa: F811
    seg = from_checkpoint(run, steps=2)
    init = weights(seg)
    seg.warm_up()
    for a, b in zip(init, weights(seg)):
        np.testing.assert_array_equal(a, b)
    traced = dict(seg.loop.trace_counts)
    assert traced["train_steps"] == 1 and traced["predict"] == 1
    seg.fit(*examples([(40, 40), (50, 30)]))
    seg.predict(examples([(20, 70)])[0])
    seg.fit(*examples([(33, 33)] * 3, seed=4), progress=lambda done, total: None)
    assert seg.loop.trace_counts == traced  # no retrace for other sizes, counts or progress


def test_bad_examples_are_refused_and_empty_or_full_masks_warned(seg):
    images, masks = examples([(40, 40), (50, 30)])
    with pytest.raises(UserError, match="at least one example"):
        seg.fit([], [])
    with pytest.raises(UserError, match="2 images but 1 masks"):
        seg.fit(images, masks[:1])
    with pytest.raises(UserError, match="example 2: the mask is 30x50"):
        seg.fit(images, [masks[0], masks[1].T])
    with pytest.raises(UserError, match="image 2 .*NaN"):
        seg.predict([images[0], np.full((8, 8, 3), np.nan)])
    seg.fit(images, [np.zeros_like(masks[0]), np.full_like(masks[1], 255)])
    assert [w.split(" mask")[0] for w in seg.warnings] == ["example 1's", "example 2's"]
    seg.fit(images, masks)
    assert seg.warnings == []


def test_saved_weights_reload_everywhere(seg, run, tmp_path):
    images, masks = examples([(40, 40), (50, 30)])
    seg.fit(images, masks)
    queries, _ = examples([(45, 45)], seed=3)
    expected = seg.predict(queries, probabilities=True)[0]
    saved = seg.save(str(tmp_path / "weights"), task="squares")
    again = from_checkpoint(str(tmp_path / "weights"))
    assert again.init.kind == "fine_tuned" and again.init.state["task"] == "squares"
    assert "adapted from" in again.init.trained_on() and "2 examples" in again.init.trained_on()
    assert again.settings.adapt == seg.settings.adapt and again.settings.model == seg.settings.model
    np.testing.assert_allclose(again.predict(queries, probabilities=True)[0], expected, atol=1e-6)
    # --pretrained --checkpoint reads it with the model flags it was trained with.
    cfg = parse_args(MODEL_FLAGS + ["--pretrained", "--checkpoint", str(tmp_path / "weights")])
    check_compatible(saved, cfg, resume=False)
    model = build_model(cfg.model)
    checkpoint.load_checkpoint(saved, {"model": list(model.variables)})
    for a, b in zip(model.variables, seg.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A folder of another kind is never mixed with.
    with pytest.raises(UserError, match="holds no fine-tuned weights"):
        seg.save(run)
    path = seg.export(str(tmp_path / "adapted.keras"))
    loaded = keras.saving.load_model(path)
    batch = np.stack([np.asarray(Image.fromarray(queries[0]).resize((32, 32), Image.BILINEAR))])
    np.testing.assert_allclose(loaded.predict(batch.astype(np.float32), verbose=0),
                               seg.loop.predict(batch).numpy(), atol=1e-5)
