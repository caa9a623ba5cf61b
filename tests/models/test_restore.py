"""--restore_efficient_net_weights_from: Keras 3 encoder files, Keras-2-layout ImageNet files and
`imagenet` (Keras' cache)."""
import dataclasses
import hashlib

import h5py
import keras
import numpy as np
import pytest

from models.build import build_model
from models.config import ModelConfig
from models import restore
from models.restore import backbone_layers, read_layer_weights, restore_backbone_weights, \
    save_backbone_weights

CFG = ModelConfig(image_size=64, rsd=(2, 4), seed=3)


def _values(layers):
    return {w.path: np.asarray(w) for layer in layers for w in layer.weights}


def _write_keras2_notop(path, app):
    """A file in the layout of Keras' `efficientnetb0_notop.h5` (Keras 2 HDF5 weights): one group
    per layer, `weight_names` like `block1a_dwconv/depthwise_kernel:0`, every layer of the full
    network (so also block6a.., top_conv), and Normalization storing the std as its variance."""
    keras2_name = {("DepthwiseConv2D", "kernel"): "depthwise_kernel"}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in app.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.4.0"
        for layer in app.layers:
            group = f.create_group(layer.name)
            names = []
            for w in layer.weights:
                short = keras2_name.get((type(layer).__name__, w.name), w.name)
                value = np.asarray(w)
                if isinstance(layer, keras.layers.Normalization) and w.name == "variance":
                    value = np.array([0.229, 0.224, 0.225], np.float32)
                names.append(f"{layer.name}/{short}:0")
                group.create_dataset(names[-1], data=value)
            group.attrs["weight_names"] = [n.encode() for n in names]


@pytest.fixture(scope="module")
def source(tmp_path_factory, b0):
    """The session's B0 with distinct BN statistics, its encoder saved as .weights.h5."""
    bns = [layer for layer in backbone_layers(b0)
           if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.moving_mean.numpy() for layer in bns]
    for layer in bns:
        layer.moving_mean.assign(np.linspace(-1, 1, layer.moving_mean.shape[0]))
    path = str(tmp_path_factory.mktemp("restore") / "encoder.weights.h5")
    yield save_backbone_weights(b0, path)
    for layer, value in zip(bns, saved):
        layer.moving_mean.assign(value)


def test_encoder_file_round_trips_exactly(b0, source, images):
    model = build_model(CFG)
    restore_backbone_weights(model, source)
    fresh = build_model(CFG)
    restored, expected = _values(backbone_layers(model)), _values(backbone_layers(b0))
    assert len(restored) == len(expected) == 209  # as many as the reference's backbone tensors
    for path, value in expected.items():
        np.testing.assert_array_equal(restored[path], value, err_msg=path)
    # the decoder and head keep their own initialization (that of the same seed, built fresh)
    for a, b in zip(model.get_layer("rsd2_fuse_conv").weights,
                    fresh.get_layer("rsd2_fuse_conv").weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(fresh.get_layer("stem_conv").kernel),
                              np.asarray(model.get_layer("stem_conv").kernel))
    encoder = keras.Model(model.input, model.get_layer("block5c_add").output)
    reference = keras.Model(b0.input, b0.get_layer("block5c_add").output)
    np.testing.assert_array_equal(np.asarray(encoder(images)), np.asarray(reference(images)))


def test_keras2_imagenet_layout_is_read_and_extra_blocks_ignored(tmp_path):
    app = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                            input_shape=(64, 64, 3))
    path = str(tmp_path / "efficientnetb0_notop.h5")
    _write_keras2_notop(path, app)
    weights = read_layer_weights(path)
    assert "top_conv" in weights and "block6a_expand_conv" in weights
    model = build_model(CFG)
    restore_backbone_weights(model, path)
    for layer in backbone_layers(model):
        for w, v in zip(layer.weights, app.get_layer(layer.name).weights):
            np.testing.assert_array_equal(np.asarray(w), np.asarray(v), err_msg=w.path)
    # the file's normalization (std stored as variance) is not used: ImageNet values stay exact
    norm = keras.Model(model.input, model.get_layer("input_normalization").output)
    x = np.full((1, 64, 64, 3), 255.0, np.float32)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(np.asarray(norm(x))[0, 0, 0], expected, rtol=1e-5)


def test_wrong_files_are_rejected_naming_the_layers(b0, source, tmp_path):
    model = build_model(CFG)
    before = _values(backbone_layers(model))
    b3 = build_model(dataclasses.replace(CFG, feature_extractor_name="efficientnet-b3"))
    with pytest.raises(ValueError) as e:
        restore_backbone_weights(b3, source, "efficientnet-b3")
    message = str(e.value)
    assert "looks like efficientnet-b0 weights" in message
    assert "block1b_dwconv" in message  # a B3 layer the B0 file lacks
    assert "stem_conv/kernel: model (3, 3, 3, 40), file (3, 3, 3, 32)" in message
    broken = str(tmp_path / "broken.weights.h5")
    with h5py.File(source) as f, h5py.File(broken, "w") as g:
        for key in f:
            f.copy(key, g)
        for name, group in list(g["layers"].items()):
            if group["vars"].attrs.get("name") == "block3a_se_reduce":
                del g["layers"][name]
    with pytest.raises(ValueError, match="backbone layers missing from the file:\n    "
                                         "block3a_se_reduce"):
        restore_backbone_weights(model, broken)
    unet_file = str(tmp_path / "unet.weights.h5")
    build_model(ModelConfig(model_name="unet", image_size=32, n_unet_encoding_stacks=1,
                            start_num_feature_maps_power=1)).save_weights(unet_file)
    with pytest.raises(ValueError, match="88 backbone layers missing"):
        restore_backbone_weights(model, unet_file)
    after = _values(backbone_layers(model))
    assert all(np.array_equal(before[p], after[p]) for p in before)  # all or nothing
    with pytest.raises(FileNotFoundError, match="--restore_efficient_net_weights_from"):
        restore_backbone_weights(model, str(tmp_path / "missing.h5"))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        restore_backbone_weights(model, str(tmp_path / "text.h5"))


def test_imagenet_comes_from_keras_cache_checked_by_md5(tmp_path, monkeypatch):
    """`imagenet` reads Keras' cached file through keras.utils.get_file and its md5 check; a file
    that fails the check and cannot be fetched is a one-line error saying where the file goes."""
    app = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                            input_shape=(64, 64, 3))
    cached = tmp_path / "keras" / "models" / "efficientnetb0_notop.h5"
    cached.parent.mkdir(parents=True)
    _write_keras2_notop(str(cached), app)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(restore, "IMAGENET_ORIGIN", (tmp_path / "offline").as_uri() + "/")
    # This test's file stands in for Keras' published one: its md5 replaces Keras' here only.
    md5 = hashlib.md5(cached.read_bytes()).hexdigest()
    monkeypatch.setitem(restore.IMAGENET_FILES, "efficientnet-b0",
                        ("efficientnetb0_notop.h5", md5))
    assert restore.keras_cache_dir() == str(tmp_path / "keras")
    model = build_model(CFG)
    restore.restore_backbone_weights(model, "imagenet", "efficientnet-b0")
    for layer in backbone_layers(model):
        for w, v in zip(layer.weights, app.get_layer(layer.name).weights):
            np.testing.assert_array_equal(np.asarray(w), np.asarray(v), err_msg=w.path)
    # Not found: the one line says where the file goes (no internet here).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(OSError) as e:
        restore.restore_backbone_weights(model, "imagenet")
    message = str(e.value)
    assert "\n" not in message and message.startswith("--restore_efficient_net_weights_from")
    assert f"put Keras' efficientnetb0_notop.h5 (md5 {md5}) at " \
           f"{tmp_path / 'empty' / 'models' / 'efficientnetb0_notop.h5'}" in message


def test_a_file_at_the_cache_path_is_never_deleted_and_a_read_only_cache_is_named(
        tmp_path, monkeypatch):
    """A file of the user's at Keras' cache path that is not Keras' (by md5) is left as it is,
    offline or not; a cache that cannot be written is named, with the two fixes that work."""
    cached = tmp_path / "keras" / "models" / "efficientnetb0_notop.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(restore, "IMAGENET_ORIGIN", (tmp_path / "offline").as_uri() + "/")
    model = build_model(CFG)
    with pytest.raises(OSError) as e:
        restore.restore_backbone_weights(model, "imagenet")
    message = str(e.value)
    assert "\n" not in message and f"{cached} is there but its md5 is " in message
    assert "it is left as it is" in message
    assert cached.read_bytes() == b"half a download"
    # A KERAS_HOME where nothing can be created (here: below a file).
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "a-file" / "keras"))
    with pytest.raises(OSError) as e:
        restore.restore_backbone_weights(model, "imagenet")
    message = str(e.value)
    assert "\n" not in message and "KERAS_HOME " in message and "cannot be written" in message
    assert "Set KERAS_HOME to a writable folder" in message
    assert "--restore_efficient_net_weights_from /path/to/efficientnetb0_notop.h5" in message
    assert f"at {tmp_path / 'a-file'}" not in message  # never: put it where it cannot go
