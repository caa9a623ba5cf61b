"""Adaptation says when it diverges, on every surface, and keeps nothing of it: the API
(`Segmenter.fit` raises DivergenceError, the init is back, predict / save / export refuse), the
command line (`--fine-tune-task --learning-rate 1e6`: one line, exit 1, nothing written) and
the page (one line on its message line, the previous results whole). Inf, NaN, fractions and
bools are refused where a setting is set: `configure`, `from_checkpoint(**overrides)`, the
page's steps and learning-rate fields and the command line's flags."""
import math
import os

import numpy as np
import pytest

from PIL import Image

from args import parse_args
from errors import DivergenceError, TrainingError, UserError
from run_metasegnet import main
from segmenter import from_checkpoint
from serve import session as handlers
from serve.app import as_message
from tests.fixtures.folders import file_bytes
from tests.segmenter.test_segment_cli import _folder
from tests.segmenter.test_segmenter_api import examples, run, weights  # noqa: F401

RUNAWAY = {"steps": 5, "learning_rate": 1e6}  # Adam at this rate: weights of ~1e26


@pytest.fixture(scope="module")
def seg(run):  # noqa: F811
    return from_checkpoint(run, steps=3)


def test_the_api_raises_keeps_the_init_and_refuses_to_use_or_save_it(seg, tmp_path):
    images, masks = examples([(40, 40), (50, 30)])
    init = weights(seg)
    good = seg.fit(images, masks)
    assert np.isfinite(good).all()
    seg.configure(**RUNAWAY)
    with pytest.raises(DivergenceError, match=r"diverged \(weight norm grew from .* with "
                                              r"learning_rate 1e\+06") as caught:
        seg.fit(images, masks)
    assert isinstance(caught.value, TrainingError) and "\n" not in str(caught.value)
    for a, b in zip(init, weights(seg)):  # the runaway weights are dropped at once
        np.testing.assert_array_equal(a, b)
    for call in (lambda: seg.predict(images[0]), lambda: seg.save(str(tmp_path / "w")),
                 lambda: seg.export(str(tmp_path / "m.keras"))):
        with pytest.raises(DivergenceError, match="refused: the last fit diverged"):
            call()
    assert not os.listdir(tmp_path)  # nothing of it saved or exported
    seg.reset()  # the init, knowingly
    assert seg.predict(images[0]).shape == (40, 40)
    seg.configure(steps=3, learning_rate=0.1)
    seg.fit(images, masks)  # a sound fit clears it
    assert seg.save(str(tmp_path / "w")).startswith(str(tmp_path / "w"))


def test_a_progress_callback_that_stops_the_fit_leaves_the_init(seg):
    images, masks = examples([(40, 40), (50, 30)])
    seg.reset()
    init = weights(seg)

    def stop(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seg.fit(images, masks, progress=stop)
    for a, b in zip(init, weights(seg)):
        np.testing.assert_array_equal(a, b)


def test_the_command_line_says_it_in_one_line_and_writes_nothing(run, tmp_path, capsys):  # noqa: F811,E501
    folder = _folder(tmp_path / "task")
    before = file_bytes(folder)
    status = main(["--fine-tune-task", str(folder), "--checkpoint", run,
                   "--learning-rate", "1e6", "--eval-iters", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith("run_metasegnet.py: training failed: The "
                                               "adaptation diverged")
    assert file_bytes(folder) == before and sorted(os.listdir(folder)) == ["query", "support"]


def test_the_page_shows_one_line_and_keeps_the_previous_results(run, tmp_path):  # noqa: F811
    # The page takes learning rates below 1, which this init survives; a server started with a
    # schedule that multiplies the rate by 1e4 every step runs away in a few.
    seg = from_checkpoint(run, scheduler="step_decay", step_decay_rate=1e4,
                          decay_after_n_steps=1)
    state = handlers.Session(str(tmp_path / "out"), "s")
    images, masks = examples([(40, 40), (50, 30)])
    for image, mask in zip(images, masks):
        handlers.add_example(state, image, None, mask)
    queries, _ = examples([(30, 30)], seed=2)
    Image.fromarray(queries[0]).save(tmp_path / "q.png")
    handlers.add_images(state, [str(tmp_path / "q.png")])
    handlers.segment(state, seg, steps=1, learning_rate=0.1)
    before, results = file_bytes(state.folder), list(state.results)
    status = object()
    shown = as_message(lambda: handlers.segment(state, seg, steps=10, learning_rate=0.9),
                       status)()
    assert list(shown) == [status] and "The adaptation diverged (" in shown[status]
    assert "\n" not in shown[status] and "Traceback" not in shown[status]
    assert file_bytes(state.folder) == before and state.results == results


@pytest.mark.parametrize("steps, learning_rate", [
    (math.inf, math.inf), (-math.inf, -math.inf), (math.nan, math.nan), (2.5, 0.0),
    (True, True), ("3", "0.1"), (-1, -0.1)])
def test_bad_settings_are_refused_where_they_are_set(seg, run, steps, learning_rate):  # noqa: F811,E501
    with pytest.raises(UserError, match="steps must be a whole number"):
        seg.configure(steps=steps)
    with pytest.raises(UserError, match="learning_rate must be a finite number > 0"):
        seg.configure(learning_rate=learning_rate)
    with pytest.raises(UserError, match="steps must be a whole number"):
        from_checkpoint(run, steps=steps)
    with pytest.raises(UserError, match="learning_rate must be a finite number > 0"):
        from_checkpoint(run, learning_rate=learning_rate)
    # The page's fields: whatever the browser sends (a typed "3" is read as the number).
    page_steps = "three" if steps == "3" else steps
    with pytest.raises(UserError, match="Steps must be"):
        handlers.check_schedule(page_steps, 0.1)
    with pytest.raises(UserError, match="The learning rate must be"):
        handlers.check_schedule(3, "fast" if learning_rate == "0.1" else learning_rate)
    assert seg.settings.adapt.steps == 3 and seg.settings.adapt.learning_rate == 0.1


def test_numbers_of_any_type_are_accepted_and_flags_refuse_the_rest(seg, capsys):
    assert seg.configure(steps=np.int64(4), learning_rate=np.float32(0.25)).adapt.steps == 4
    assert type(seg.settings.adapt.steps) is int and type(seg.settings.adapt.learning_rate) is float
    assert handlers.check_schedule(4.0, "0.1") == (4, 0.1)
    seg.configure(steps=3, learning_rate=0.1)
    for flags in (["--learning-rate", "inf"], ["--learning-rate", "nan"],
                  ["--eval-iters", "2.5"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(flags)
        assert exited.value.code == 2
    assert "--learning-rate" in capsys.readouterr().err
