"""`--export DIR --export_format F --checkpoint INIT` writes any init the tool loads (a meta-training
run, fine-tuned weights, the paper's TF1 checkpoint) in each format, predicting what
`from_checkpoint(...).predict` predicts; `--export_keras` stays as the keras alias."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import models.layers  # noqa: F401  (registers metaseg's layer classes for load_model)
from run_metasegnet import main
from segmenter import from_checkpoint
from tests.fixtures.tf1_synthetic import write_synthetic_checkpoint
from tests.segmenter.test_segmenter_api import examples, run  # noqa: F401


def _images(size):
    return np.stack([np.asarray(a) for a in examples([(size, size)] * 2, seed=3)[0]])


def test_a_meta_training_run_in_every_format(run, tmp_path, capsys):  # noqa: F811
    seg = from_checkpoint(run)
    images = _images(seg.image_size)
    expected = np.stack(seg.predict(list(images), probabilities=True))
    out = str(tmp_path / "exported")
    for fmt in ("saved_model", "tflite", "keras"):
        assert main(["--export", out, "--export_format", fmt, "--checkpoint", run]) == 0
        assert f"Exported the model ({fmt})" in capsys.readouterr().out
    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(images))["foreground"].numpy(), expected,
                               atol=1e-4)
    runner = tf.lite.Interpreter(os.path.join(out, "model.tflite")).get_signature_runner()
    np.testing.assert_allclose(runner(images=images)["foreground"], expected, atol=1e-4)
    loaded = keras.saving.load_model(os.path.join(out, "model.keras"))
    np.testing.assert_allclose(loaded.predict(images.astype(np.float32), verbose=0)[..., 1],
                               expected, atol=1e-4)


def test_fine_tuned_weights_and_the_tf1_checkpoint(run, tmp_path, capsys):  # noqa: F811
    seg = from_checkpoint(run)
    seg.fit(*examples([(40, 40), (30, 50)]))
    weights = seg.save(str(tmp_path / "weights"))
    images = _images(seg.image_size)
    assert main(["--export_keras", str(tmp_path / "adapted.keras"), "--checkpoint",
                 str(tmp_path / "weights")]) == 0
    loaded = keras.saving.load_model(str(tmp_path / "adapted.keras"))
    np.testing.assert_allclose(loaded.predict(images.astype(np.float32), verbose=0)[..., 1],
                               np.stack(seg.predict(list(images), probabilities=True)), atol=1e-4)
    assert os.path.isdir(weights)
    tf1 = str(tmp_path / "tf1")
    write_synthetic_checkpoint(tf1, optimizer="adam", step=49999)
    assert main(["--export", str(tmp_path / "paper"), "--export_format", "saved_model",
                 "--checkpoint", tf1]) == 0
    serve = tf.saved_model.load(str(tmp_path / "paper" / "saved_model"))
    signature = serve.signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, 224, 224, 3]
    with pytest.raises(SystemExit):
        main(["--export", str(tmp_path / "x"), "--serve", "--checkpoint", tf1])
    assert "--export is not read by --serve" in capsys.readouterr().err
