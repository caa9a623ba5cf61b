"""Training log: CSV rows, resume truncation, TensorBoard scalars, PNG curves, progress bar."""
import glob
import io
import os

import numpy as np
import tensorflow as tf

from report.logs import TrainingLog, plot_training_curves, read_log
from report.progress import Progress, format_seconds


def test_csv_tensorboard_and_plot(tmp_path):
    run = str(tmp_path)
    log = TrainingLog(run)
    log.log(0, meta_step_size=0.1, loss=None, seconds=0.0, train_miou=0.2, val_miou=0.1)
    for i in range(1, 5):
        log.log(i, meta_step_size=0.1 - 0.01 * i, loss=1.0 / i, seconds=0.5,
                train_miou=0.5 if i == 4 else None, val_miou=0.4 if i == 4 else None)
    log.close()
    rows = read_log(os.path.join(run, "training_log.csv"))
    assert [r["meta_iter"] for r in rows] == [0, 1, 2, 3, 4]
    assert np.isnan(rows[0]["loss"]) and rows[2]["loss"] == 0.5 and rows[4]["val_miou"] == 0.4
    events = glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))
    tags = {}
    for e in tf.compat.v1.train.summary_iterator(events[0]):
        for v in e.summary.value:
            tags.setdefault(v.tag, []).append((e.step, float(tf.make_ndarray(v.tensor))))
            assert v.metadata.plugin_data.plugin_name == "scalars"
    assert tags["loss"][-1] == (4, 0.25) and len(tags["meta_step_size"]) == 5
    assert [s for s, _ in tags["val_mIoU"]] == [0, 4]
    png = plot_training_curves(os.path.join(run, "training_log.csv"),
                               os.path.join(run, "curves.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # a resumed run from step 2 drops the rows it will redo
    TrainingLog(run, start_step=2).close()
    assert [r["meta_iter"] for r in read_log(os.path.join(run, "training_log.csv"))] == [0, 1, 2]


def test_progress_bar_prints_eta():
    out = io.StringIO()
    bar = Progress(4, "meta-training", stream=out, min_interval_s=0.0)
    for _ in range(4):
        bar.update(loss=0.5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("meta-training 4/4 [") and "100%" in lines[-1]
    assert "loss=0.5" in lines[-1] and "<" in lines[-1]
    assert format_seconds(3723) == "1h02m03s" and format_seconds(65) == "1m05s"
