"""TF1 checkpoint loader, tested on reference-format checkpoints written here with tf.compat.v1.

`tests/fixtures/tf1_synthetic.py` rebuilds the reference graph in TF1 graph mode, so variable names
come from TF1's own auto-naming and the graph's forward pass is an independent reference for our
Keras model.
"""
import dataclasses
import hashlib
import os
import shutil
import tempfile
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.build import build_model
from models.config import ModelConfig
from models.layers import ResizeBilinear
from storage.export import export
from storage.tf1_checkpoint import is_tf1_checkpoint, restore_tf1_checkpoint
from storage.tf1_names import (IGNORE_EMA, IGNORE_FINAL_LAYER, IGNORE_GLOBAL_STEP, IGNORE_OPTIMIZER,
                            IGNORE_UNUSED_BLOCK)
from tests.fixtures.tf1_synthetic import MEAN_RGB, STDDEV_RGB, pack_tar_gz, save_tensors, \
    write_synthetic_checkpoint

SIZE = 64
PROBE = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
NAME = "EfficientLab-6-3_FOMAML-star_checkpoint"


def _model_tensors(reader):
    """The checkpoint's model variables (no optimizer / EMA / step state), read into numpy."""
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n.startswith(("efficientnet-b", "decode/")) and "/Adam" not in n
            and "ExponentialMovingAverage" not in n}


def _node_output(model, layer_name):
    """The layer's output in `model`'s graph. EfficientLab re-wires the application's layers onto
    its own input, so they have a second call node and `layer.output` (the first) is not ours."""
    for node in reversed(model.get_layer(layer_name)._inbound_nodes):
        try:
            keras.Model(model.input, node.outputs[0])
            return node.outputs[0]
        except ValueError:
            continue
    raise AssertionError(f"{layer_name} is not connected to the model's input")


def _outputs(model, layer_names, images):
    sub = keras.Model(model.input, [_node_output(model, n) for n in layer_names])
    return [np.asarray(o) for o in sub(images, training=False)]


def _snapshot(model):
    return [np.array(w) for w in model.weights]


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """A B0 `--rsd 2 4` checkpoint with Adam slots, EMA shadows and global_step, and its model."""
    root = tmp_path_factory.mktemp("tf1")
    directory = str(root / NAME)
    reference = write_synthetic_checkpoint(directory, optimizer="adam", ema=True, global_step=True,
                                           step=49999, probe_images=PROBE)
    cfg = ModelConfig(image_size=SIZE, rsd=(2, 4))
    return SimpleNamespace(root=root, dir=directory, reference=reference, cfg=cfg,
                           model=build_model(cfg), reader=tf.train.load_checkpoint(directory))


def test_every_keras_weight_gets_exactly_one_tensor(b0):
    report = restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg)
    assert report.mapped == {"backbone": 209, "decoder": 36, "head": 2}
    trainable = sum(1 for n in _model_tensors(b0.reader) if "moving_" not in n)
    assert len(report.ignored[IGNORE_OPTIMIZER]) == 2 * trainable + 2  # slots + beta powers
    assert len(report.ignored[IGNORE_EMA]) == 247
    assert report.ignored[IGNORE_GLOBAL_STEP] == ("global_step",)
    # Random values are unique, so a value match identifies the tensor independently of the mapping.
    by_value = {}
    for name, value in _model_tensors(b0.reader).items():
        by_value.setdefault((value.shape, hashlib.sha1(value.tobytes()).hexdigest()), []).append(name)
    kept = {p for paths in report.kept.values() for p in paths}
    used = []
    for w in b0.model.weights:
        if w.path in kept:
            continue
        value = np.asarray(w)
        used += by_value[(value.shape, hashlib.sha1(value.tobytes()).hexdigest())]
    assert len(used) == len(set(used)) == 247 == len(_model_tensors(b0.reader))


@pytest.mark.parametrize("keras_weight, tf1_name", [
    ("block1a_dwconv/kernel", "efficientnet-b0/blocks_0/depthwise_conv2d/depthwise_kernel"),
    ("block1a_project_conv/kernel", "efficientnet-b0/blocks_0/conv2d/kernel"),
    ("block1a_project_bn/moving_mean",
     "efficientnet-b0/blocks_0/tpu_batch_normalization_1/moving_mean"),
    ("block2a_expand_conv/kernel", "efficientnet-b0/blocks_1/conv2d/kernel"),
    ("block2a_project_conv/kernel", "efficientnet-b0/blocks_1/conv2d_1/kernel"),
    ("block5c_se_reduce/bias", "efficientnet-b0/blocks_10/se/conv2d/bias"),
    ("block5c_project_bn/moving_variance",
     "efficientnet-b0/blocks_10/tpu_batch_normalization_2/moving_variance"),
    ("rsd4_b0_conv/kernel", "decode/decode_skip_connections_3/conv2d/kernel"),
    ("rsd2_b1_bn/gamma", "decode/decode_skip_connections_1/batch_normalization_1/gamma"),
    ("rsd2_fuse_bn/moving_variance",
     "decode/decode_skip_connections_1/batch_normalization_2/moving_variance"),
    ("final_layer_weights/kernel", "decode/final_layer_weights/kernel"),
])
def test_weights_hold_the_reference_tensor(b0, keras_weight, tf1_name):
    restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg)
    layer, weight = keras_weight.split("/")
    [w] = [w for w in b0.model.get_layer(layer).weights if w.name == weight]
    np.testing.assert_array_equal(np.asarray(w), b0.reader.get_tensor(tf1_name))


def test_forward_matches_the_reference_graph(b0):
    restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg)
    probabilities = np.asarray(b0.model(PROBE, training=False))
    np.testing.assert_allclose(probabilities, b0.reference["probabilities"], atol=2e-5)
    taps = {"stem_activation": "stem", "block1a_project_bn": "block_0", "block2b_add": "reduction_2",
            "block5c_add": "reduction_4"}
    for got, key in zip(_outputs(b0.model, list(taps), PROBE), taps.values()):
        np.testing.assert_allclose(got, b0.reference[key], rtol=1e-4, atol=1e-4, err_msg=key)


def _stem_and_blocks_from_raw_tensors(reader, images):
    """Stem, blocks_0 (no expand) and blocks_1 (expand, stride 2) computed from checkpoint tensors."""
    def t(name):
        return reader.get_tensor(f"efficientnet-b0/{name}")

    def bn(x, scope):
        return tf.nn.batch_normalization(x, t(f"{scope}/moving_mean"), t(f"{scope}/moving_variance"),
                                         t(f"{scope}/beta"), t(f"{scope}/gamma"), 1e-3)

    def conv(x, name, stride=1):
        return tf.nn.conv2d(x, t(name), stride, "SAME")

    def block(x, i, stride, expand):
        # TF1 numbers the block's BNs in call order; without the expand conv there are only two.
        s, bns = f"blocks_{i}", ["tpu_batch_normalization", "tpu_batch_normalization_1",
                                 "tpu_batch_normalization_2"][:3 if expand else 2]
        h = tf.nn.swish(bn(conv(x, f"{s}/conv2d/kernel"), f"{s}/{bns.pop(0)}")) if expand else x
        h = tf.nn.depthwise_conv2d(h, t(f"{s}/depthwise_conv2d/depthwise_kernel"),
                                   [1, stride, stride, 1], "SAME")
        h = tf.nn.swish(bn(h, f"{s}/{bns.pop(0)}"))
        se = tf.reduce_mean(h, [1, 2], keepdims=True)
        se = tf.nn.swish(conv(se, f"{s}/se/conv2d/kernel") + t(f"{s}/se/conv2d/bias"))
        h *= tf.sigmoid(conv(se, f"{s}/se/conv2d_1/kernel") + t(f"{s}/se/conv2d_1/bias"))
        return bn(conv(h, f"{s}/conv2d_1/kernel" if expand else f"{s}/conv2d/kernel"),
                  f"{s}/{bns.pop(0)}")

    x = (images - np.float32(MEAN_RGB)) / np.float32(STDDEV_RGB)
    stem = tf.nn.swish(bn(conv(x, "stem/conv2d/kernel", 2), "stem/tpu_batch_normalization"))
    block_0 = block(stem, 0, 1, expand=False)
    return [np.asarray(v) for v in (stem, block_0, block(block_0, 1, 2, expand=True))]


def test_stem_and_mbconv_blocks_match_raw_checkpoint_tensors(b0):
    restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg)
    got = _outputs(b0.model, ["stem_activation", "block1a_project_bn", "block2a_project_bn"], PROBE)
    for g, want, what in zip(got, _stem_and_blocks_from_raw_tensors(b0.reader, PROBE),
                             ("stem", "blocks_0", "blocks_1")):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4, err_msg=what)


def test_renamed_variable_fails_naming_it_and_leaves_the_model_unchanged(b0, tmp_path):
    tensors = _model_tensors(b0.reader)
    tensors["efficientnet-b0/blocks_4/se/conv2d_2/bias"] = tensors.pop(
        "efficientnet-b0/blocks_4/se/conv2d_1/bias")
    save_tensors(str(tmp_path), tensors)
    before = _snapshot(b0.model)
    with pytest.raises(ValueError) as err:
        restore_tf1_checkpoint(b0.model, str(tmp_path), b0.cfg)
    assert "block3b_se_expand/bias <- efficientnet-b0/blocks_4/se/conv2d_1/bias" in str(err.value)
    assert "efficientnet-b0/blocks_4/se/conv2d_2/bias [240]" in str(err.value)
    assert all(np.array_equal(a, np.asarray(w)) for a, w in zip(before, b0.model.weights))


def test_reshaped_variable_fails_naming_it(b0, tmp_path):
    tensors = _model_tensors(b0.reader)
    name = "decode/decode_skip_connections_1/conv2d_2/kernel"
    tensors[name] = np.transpose(tensors[name], (0, 1, 3, 2))  # (3, 3, 360, 112) -> (3, 3, 112, 360)
    save_tensors(str(tmp_path), tensors)
    with pytest.raises(ValueError, match=r"rsd2_fuse_conv/kernel \(3, 3, 360, 112\) <- "
                                         rf"{name} \[3, 3, 112, 360\]"):
        restore_tf1_checkpoint(b0.model, str(tmp_path), b0.cfg)


def test_do_not_restore_final_layer_loads_all_but_a_1001_output_head(b0, tmp_path):
    tensors = _model_tensors(b0.reader)
    tensors["decode/final_layer_weights/kernel"] = np.ones((1, 1, 112, 1001), np.float32)
    tensors["decode/final_layer_weights/bias"] = np.ones((1001,), np.float32)
    save_tensors(str(tmp_path), tensors)
    with pytest.raises(ValueError, match="final_layer_weights/kernel"):
        restore_tf1_checkpoint(b0.model, str(tmp_path), b0.cfg)
    head = [np.array(w) for w in b0.model.get_layer("final_layer_weights").weights]
    b0.model.get_layer("rsd2_fuse_bn").weights[0].assign(
        np.zeros(b0.model.get_layer("rsd2_fuse_bn").weights[0].shape))
    report = restore_tf1_checkpoint(b0.model, str(tmp_path), b0.cfg, restore_final_layer=False)
    assert report.mapped == {"backbone": 209, "decoder": 36}
    assert report.ignored[IGNORE_FINAL_LAYER] == ("decode/final_layer_weights/bias",
                                                  "decode/final_layer_weights/kernel")
    assert all(np.array_equal(a, np.asarray(w))
               for a, w in zip(head, b0.model.get_layer("final_layer_weights").weights))
    fuse_bn = "decode/decode_skip_connections_1/batch_normalization_2/gamma"
    np.testing.assert_array_equal(np.asarray(b0.model.get_layer("rsd2_fuse_bn").weights[0]),
                                  tensors[fuse_bn])


def test_tar_gz_with_the_authors_absolute_paths(b0, tmp_path, monkeypatch):
    # The released archive's `checkpoint` file names paths on the authors' machine.
    staged = tmp_path / NAME
    shutil.copytree(b0.dir, staged)
    (staged / "checkpoint").write_text(
        f'model_checkpoint_path: "/home/author/runs/{NAME}/model.ckpt-49999"\n')
    archive = pack_tar_gz(str(staged), str(tmp_path / f"{NAME}.tar.gz"))
    shutil.rmtree(staged)
    assert is_tf1_checkpoint(archive)
    kept = {p for paths in restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg).kept.values()
            for p in paths}
    for w in b0.model.weights:  # wipe what the loader fills (not the input normalization constants)
        if w.path not in kept:
            w.assign(np.zeros(w.shape, w.dtype))
    unpack_root = tmp_path / "tmp"
    unpack_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(unpack_root))
    report = restore_tf1_checkpoint(b0.model, archive, b0.cfg)
    assert report.num_mapped == 247 and report.checkpoint == archive
    np.testing.assert_allclose(np.asarray(b0.model(PROBE, training=False)),
                               b0.reference["probabilities"], atol=2e-5)
    assert list(unpack_root.iterdir()) == []  # the temporary unpacked copy is gone


def test_detection(b0, tmp_path):
    assert is_tf1_checkpoint(b0.dir)
    assert is_tf1_checkpoint(os.path.join(b0.dir, "model.ckpt-49999"))
    assert not is_tf1_checkpoint(str(tmp_path))  # empty directory
    assert not is_tf1_checkpoint(str(tmp_path / "missing"))
    tf2 = tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(tmp_path / "tf2" / "ckpt"))
    assert not is_tf1_checkpoint(os.path.dirname(tf2))  # an object-based TF2 checkpoint
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        restore_tf1_checkpoint(b0.model, str(tmp_path / "missing"), b0.cfg)


def test_backbone_only_restore_keeps_the_decoder(b0):
    restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg)
    conv = b0.model.get_layer("rsd4_b0_conv").weights[0]
    conv.assign(np.full(conv.shape, 0.5, np.float32))
    report = restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg, backbone_only=True)
    assert report.mapped == {"backbone": 209}
    assert np.all(np.asarray(conv) == 0.5)


def test_export_keras_round_trip(b0, tmp_path):
    restore_tf1_checkpoint(b0.model, b0.dir, b0.cfg)
    with pytest.raises(ValueError, match="cannot write"):
        export(b0.model, str(tmp_path / "model.h5"), "keras")
    path = export(b0.model, str(tmp_path / "out" / "efficientlab.keras"), "keras")
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(PROBE, training=False)),
                               b0.reference["probabilities"], atol=2e-5)


def test_b3_ignores_the_blocks_it_never_uses(b0, tmp_path):
    reference = write_synthetic_checkpoint(str(tmp_path), feature_extractor_name="efficientnet-b3",
                                           optimizer=None, probe_images=PROBE)
    cfg = ModelConfig(image_size=SIZE, rsd=(2, 4), feature_extractor_name="efficientnet-b3")
    model = build_model(cfg)
    report = restore_tf1_checkpoint(model, str(tmp_path), cfg)
    assert report.mapped == {"backbone": 337, "decoder": 36, "head": 2}
    unused = report.ignored[IGNORE_UNUSED_BLOCK]
    assert len(unused) == 8 * 19
    assert {n.split("/")[1] for n in unused} == {f"blocks_{i}" for i in range(18, 26)}
    np.testing.assert_allclose(np.asarray(model(PROBE, training=False)),
                               reference["probabilities"], atol=2e-5)
    with pytest.raises(ValueError, match="the checkpoint has efficientnet-b3"):
        restore_tf1_checkpoint(b0.model, str(tmp_path), b0.cfg)


@pytest.mark.parametrize("in_hw, out_hw", [((14, 14), (56, 56)), ((56, 56), (224, 224)),
                                           ((7, 5), (13, 22)), ((16, 9), (5, 4)), ((1, 3), (4, 6))])
def test_align_corners_resize_matches_tf1(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype("float32")
    want = tf.compat.v1.image.resize(x, out_hw, method="bilinear", align_corners=True)
    got = ResizeBilinear(out_hw, align_corners=True)(x)
    # TF1 computes the source coordinates in float32, the layer in float64: ~1e-5 apart.
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-4, atol=1e-4)
    half_pixel = ResizeBilinear(out_hw, align_corners=False)(x)  # Keras' default sampling
    np.testing.assert_allclose(np.asarray(half_pixel), tf.image.resize(x, out_hw).numpy(),
                               rtol=1e-4, atol=1e-4)
    if out_hw[0] > in_hw[0] > 1:  # the two samplings really differ: the switch matters
        assert np.abs(np.asarray(got) - np.asarray(half_pixel)).max() > 1e-3


def test_paper_architecture_resizes_with_align_corners_by_default(b0):
    resizes = [layer for layer in b0.model.layers if isinstance(layer, ResizeBilinear)]
    assert {layer.name for layer in resizes} == {"rsd2_upsample", "rsd4_upsample", "logits_resize"}
    assert all(layer.align_corners for layer in resizes)


def test_restore_efficient_net_weights_from_a_tf1_checkpoint(b0):
    """--restore_efficient_net_weights_from takes a TF1 checkpoint too: backbone in, decoder not."""
    from storage.tf1_checkpoint import restore_backbone
    fresh = build_model(b0.cfg)
    cfg = dataclasses.replace(b0.cfg, restore_efficient_net_weights_from=b0.dir)
    model = build_model(cfg)
    restore_backbone(model, cfg)
    stem = b0.reader.get_tensor("efficientnet-b0/stem/conv2d/kernel")
    assert np.array_equal(np.asarray(model.get_layer("stem_conv").weights[0]), stem)
    assert not np.array_equal(np.asarray(fresh.get_layer("stem_conv").weights[0]), stem)
    # The decoder keeps the seeded initialization of a plain build.
    assert np.array_equal(np.asarray(model.get_layer("rsd4_b0_conv").weights[0]),
                          np.asarray(fresh.get_layer("rsd4_b0_conv").weights[0]))


def test_skip_decoding_runs_before_the_rsd_modules_and_loads_from_tf1(tmp_path):
    """--skip_decoding as the reference builds it (before the RSD modules, in the unnumbered
    `decode/decode_skip_connections` scope): every tensor maps and the forward pass matches."""
    directory = str(tmp_path / "skipdec")
    reference = write_synthetic_checkpoint(directory, skip_decoding=True, optimizer=None,
                                           probe_images=PROBE, seed=2)
    cfg = ModelConfig(image_size=SIZE, rsd=(2, 4), skip_decoding=True)
    model = build_model(cfg)
    report = restore_tf1_checkpoint(model, directory, cfg)
    # skip decoder: 2 depthwise + 3 convs + 5 BNs x 4; RSD 4 gains its residual conv + BN (6)
    assert report.mapped == {"backbone": 209, "decoder": 36 + 25 + 6, "head": 2}
    reader = tf.train.load_checkpoint(directory)
    np.testing.assert_array_equal(
        model.get_layer("skipdec_sep2_dwconv").kernel.numpy(),
        reader.get_tensor("decode/decode_skip_connections/depthwise_conv2d_12/depthwise_kernel"))
    np.testing.assert_array_equal(
        model.get_layer("skipdec_sep1_pw_bn").gamma.numpy(),
        reader.get_tensor("decode/decode_skip_connections/batch_normalization_2/gamma"))
    probabilities = np.asarray(model(PROBE, training=False))
    np.testing.assert_allclose(probabilities, reference["probabilities"], atol=5e-5)


def _tiny_tf1_checkpoint(folder):
    """A one-tensor checkpoint in TF1's V2 format under a reference scope."""
    import tensorflow as tf
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, "model.ckpt-1")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["efficientnet-b0/stem/conv2d/kernel"],
                      shape_and_slices=[""], tensors=[tf.ones((64, 64, 4))])
    return prefix


@pytest.mark.parametrize("member", ["dotdot", "symlink", "hardlink", "device", "corrupt_gz",
                                    "truncated_gz"])
def test_hostile_or_corrupt_archive_is_one_line_error(tmp_path, member):
    import io
    import tarfile

    from storage.tf1_checkpoint import open_tf1_checkpoint
    prefix = _tiny_tf1_checkpoint(str(tmp_path / "ckpt"))
    archive = str(tmp_path / "ckpt.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(str(tmp_path / "ckpt"), arcname="ckpt")
        extra = tarfile.TarInfo({"dotdot": "ckpt/../../evil.txt"}.get(member, "ckpt/extra"))
        if member == "symlink":
            extra.type, extra.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif member == "hardlink":
            extra.type, extra.linkname = tarfile.LNKTYPE, "ckpt/model.ckpt-1.index"
        elif member == "device":
            extra.type, extra.devmajor, extra.devminor = tarfile.CHRTYPE, 1, 3
        if member in ("dotdot", "symlink", "hardlink", "device"):
            tar.addfile(extra, io.BytesIO(b"") if member == "dotdot" else None)
    data = open(archive, "rb").read()
    if member == "corrupt_gz":
        data = data[:20] + bytes(len(data) - 20)
    elif member == "truncated_gz":
        data = data[:len(data) // 2]
    with open(archive, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError) as error:
        with open_tf1_checkpoint(archive):
            pass
    assert archive in str(error.value) and "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "evil.txt") and os.path.isfile(prefix + ".index")


def test_truncated_data_and_corrupt_index_are_reported_as_corrupt(tmp_path):
    from storage.tf1_checkpoint import is_tf1_checkpoint, open_tf1_checkpoint
    prefix = _tiny_tf1_checkpoint(str(tmp_path / "ckpt"))
    assert is_tf1_checkpoint(str(tmp_path / "ckpt"))
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 3)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        with open_tf1_checkpoint(str(tmp_path / "ckpt")) as (_, reader):
            reader.get_tensor("efficientnet-b0/stem/conv2d/kernel")
    with open(prefix + ".index", "wb") as f:
        f.write(b"\x00garbage" * 20)
    with pytest.raises(ValueError, match="index is corrupt"):  # not "holds no checkpoint"
        is_tf1_checkpoint(str(tmp_path / "ckpt"))
