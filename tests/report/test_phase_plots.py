"""Per-phase mean-IoU and loss curves of the MTL phases."""
import os

import numpy as np
import pytest

from report.plots import epoch_means, plot_phase_curves


def test_epoch_means_group_tasks_by_epoch():
    meta_iter = np.arange(0, 7, dtype=np.float64)
    loss = np.array([np.nan, 1.0, 3.0, 5.0, np.nan, 2.0, 4.0])
    epochs, means = epoch_means(meta_iter, loss, 3)
    np.testing.assert_array_equal(epochs, [1, 2])
    np.testing.assert_allclose(means, [3.0, 3.0])


def test_each_phase_writes_its_curves(tmp_path):
    rows = [{"meta_iter": i, "loss": 1.0 / (i + 1), "val_miou": 0.1 * i, "val_loss": 2.0 - i,
             "train_miou": 0.2 * i} for i in range(5)]
    pre = plot_phase_curves(rows, str(tmp_path), "pre_train")
    meta = plot_phase_curves(rows, str(tmp_path), "meta_train", tasks_per_epoch=2)
    assert [os.path.basename(p) for p in pre + meta] == [
        "pre_train_curves.png", "meta_train_curves.png", "meta_val_curves.png"]
    assert all(os.path.getsize(p) > 1000 for p in pre + meta)
    with pytest.raises(ValueError, match="phase"):
        plot_phase_curves(rows, str(tmp_path), "meta_eval")
