"""Write TF1 checkpoints in the exact format of the paper's released EfficientLab checkpoint.

The released `EfficientLab-6-3_FOMAML-star_checkpoint.tar.gz` cannot be fetched here, so the loader in
`meta/tf1_checkpoint.py` is tested on checkpoints written by this module. It rebuilds the reference
network (ml4ai/mliis `models/efficientlab.py` on the TF TPU EfficientNet) as a TF1 graph with
`tf.compat.v1`, creating each variable in the reference's call order inside the same variable scopes,
so TF1's own auto-naming (`conv2d`, `conv2d_1`, `tpu_batch_normalization_2`, ...) yields the names;
variables hold random values from one seed. The graph also computes the reference forward pass
(inference mode: BN moving statistics, no dropout or drop-connect), which the tests compare with
our Keras EfficientLab after loading. CLI: `python -m meta.tf1_synthetic --out_dir DIR`.
"""
from __future__ import annotations

import argparse
import math
import os
import tarfile

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # the reference's input normalization
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
BN_EPSILON = 1e-3
# TF TPU EfficientNet stages: (kernel, repeats, input filters, output filters, expand ratio, stride).
STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
          (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
# (width coefficient, depth coefficient, max_block_num, RSD filters F) per feature extractor.
VARIANTS = {"efficientnet-b0": (1.0, 1.0, 10, 112), "efficientnet-b3": (1.2, 1.4, 17, 136)}


def _round_filters(filters: int, width: float) -> int:
    """The TPU EfficientNet's channel rounding (multiples of 8, never more than 10% down)."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def efficientnet_blocks(feature_extractor_name: str) -> list[tuple[int, int, int, int, int]]:
    """The MBConv blocks the reference builds, after its max_block_num truncation.

    Args:
        feature_extractor_name: "efficientnet-b0" or "efficientnet-b3".
    Returns:
        One (kernel, stride, input filters, output filters, expand ratio) per `blocks_<i>` scope.
    """
    width, depth, max_block_num, _ = VARIANTS[feature_extractor_name]
    blocks, unscaled = [], 0
    for kernel, repeats, c_in, c_out, expand, stride in STAGES:
        unscaled += repeats
        if unscaled > max_block_num + 1:  # reference rule: counts un-scaled repeats
            break
        c_in, c_out = _round_filters(c_in, width), _round_filters(c_out, width)
        for r in range(int(math.ceil(depth * repeats))):
            blocks.append((kernel, stride if r == 0 else 1, c_in if r == 0 else c_out, c_out, expand))
    return blocks


class _ReferenceGraph:
    """Creates reference-named variables with random values and the inference forward pass."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.values: dict = {}  # variable -> value loaded after initialization

    def _variable(self, name: str, value: np.ndarray, trainable: bool = True):
        var = v1.get_variable(name, value.shape, tf.float32, v1.zeros_initializer(),
                              trainable=trainable)
        self.values[var] = value.astype(np.float32)
        return var

    def conv(self, x, filters, kernel, *, stride=1, dilation=1, bias=False, name=None, std=None):
        """tf.layers.Conv2D, 'same' padding; named `conv2d[_k]` by TF1 unless `name` is given."""
        c_in = int(x.shape[-1])
        with v1.variable_scope(name, default_name="conv2d"):
            std = std or math.sqrt(2.0 / (kernel * kernel * filters))
            k = self._variable("kernel", self.rng.normal(0, std, (kernel, kernel, c_in, filters)))
            y = tf.nn.conv2d(x, k, stride, "SAME", dilations=dilation)
            if bias:
                y += self._variable("bias", self.rng.normal(0, 0.1, (filters,)))
        return y

    def depthwise(self, x, kernel, stride, name=None):
        """The TPU EfficientNet's DepthwiseConv2D: `depthwise_conv2d/depthwise_kernel`."""
        c = int(x.shape[-1])
        with v1.variable_scope(name, default_name="depthwise_conv2d"):
            k = self._variable("depthwise_kernel",
                               self.rng.normal(0, math.sqrt(2.0 / (kernel * kernel)),
                                               (kernel, kernel, c, 1)))
            return tf.nn.depthwise_conv2d(x, k, [1, stride, stride, 1], "SAME")

    def batch_norm(self, x, base_name, batch_statistics=False):
        """BN with random statistics, in inference mode unless `batch_statistics` (the skip
        decoder's BN, always in training mode); TF1 names it `<base_name>[_k]`."""
        c = (int(x.shape[-1]),)
        with v1.variable_scope(None, default_name=base_name):
            gamma = self._variable("gamma", self.rng.uniform(0.5, 1.5, c))
            beta = self._variable("beta", self.rng.normal(0, 0.2, c))
            mean = self._variable("moving_mean", self.rng.normal(0, 0.2, c), trainable=False)
            var = self._variable("moving_variance", self.rng.uniform(0.5, 2.0, c), trainable=False)
            if batch_statistics:
                mean, var = tf.nn.moments(x, [0, 1, 2])
            return tf.nn.batch_normalization(x, mean, var, beta, gamma, BN_EPSILON)

    def mbconv(self, x, kernel, stride, c_in, c_out, expand):
        """One TPU EfficientNet MBConv block (inside its `blocks_<i>` scope)."""
        tpu_bn = "tpu_batch_normalization"
        h = x
        if expand != 1:
            h = tf.nn.swish(self.batch_norm(self.conv(h, c_in * expand, 1), tpu_bn))
        h = tf.nn.swish(self.batch_norm(self.depthwise(h, kernel, stride), tpu_bn))
        with v1.variable_scope("se"):
            s = tf.reduce_mean(h, [1, 2], keepdims=True)
            s = self.conv(tf.nn.swish(self.conv(s, max(1, int(c_in * 0.25)), 1, bias=True)),
                          c_in * expand, 1, bias=True)
            h = tf.sigmoid(s) * h
        h = self.batch_norm(self.conv(h, c_out, 1), tpu_bn)
        return h + x if stride == 1 and c_in == c_out else h

    def decoder_conv(self, x, filters, kernel, dilation=1):
        """The RSD's conv (bias, Glorot-scale values) -> swish -> BN, with TF1 default names."""
        std = math.sqrt(2.0 / (kernel * kernel * (int(x.shape[-1]) + filters)))
        y = tf.nn.swish(self.conv(x, filters, kernel, dilation=dilation, bias=True, std=std))
        return self.batch_norm(y, "batch_normalization")


def _resize_align_corners(x, size):
    """The reference's `tf.image.resize_images(..., BILINEAR, align_corners=True)` (TF1 kernel)."""
    return tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True,
                                     half_pixel_centers=False)


def _skip_decoder(graph: _ReferenceGraph, embedded, skip, images, filters: int, blocks: int):
    """The reference's `--skip_decoding` (DeepLab v3+ style), its BNs on batch statistics."""
    def bn(x):
        return graph.batch_norm(x, "batch_normalization", batch_statistics=True)

    up = _resize_align_corners(embedded, tf.shape(images)[1:3] // 4)
    s = tf.nn.swish(bn(graph.conv(skip, filters // 2, 1)))
    y = tf.concat([up, s], -1)
    for j in range(2):  # plain Keras depthwise layers: named by the graph-wide counter
        y = tf.nn.swish(bn(graph.depthwise(y, 3, 1, name=f"depthwise_conv2d_{blocks + j}")))
        y = tf.nn.swish(bn(graph.conv(y, filters + filters // 2, 1)))
    return y


def build_reference_graph(images, rng: np.random.Generator, *,
                          feature_extractor_name: str = "efficientnet-b0",
                          rsd: tuple[int, ...] = (2, 4), num_outputs: int = 2,
                          skip_decoding: bool = False):
    """Build the reference EfficientLab in the current TF1 graph (inference mode).

    Args:
        images: float32 placeholder (N, S, S, 3) with RGB values in [0, 255].
        rng: source of every variable's random value.
        feature_extractor_name: "efficientnet-b0" or "efficientnet-b3".
        rsd: reductions (1..4) with a residual skip decoder module, as `--rsd`.
        num_outputs: channels of the final 1x1 conv (2 for binary segmentation).
        skip_decoding: build the `--skip_decoding` decoder before the RSD modules.
    Returns:
        (endpoints, values): endpoints maps "stem", "block_<i>", "reduction_<i>", "decoded",
        "logits", "probabilities" to tensors; values maps each variable to its value.
    """
    if feature_extractor_name not in VARIANTS:
        raise ValueError(f"feature_extractor_name must be one of {sorted(VARIANTS)}. "
                         f"Received: {feature_extractor_name!r}")
    graph, ends = _ReferenceGraph(rng), {}
    x = (images - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)
    blocks = efficientnet_blocks(feature_extractor_name)
    with v1.variable_scope(feature_extractor_name, reuse=v1.AUTO_REUSE):
        with v1.variable_scope("stem"):
            stem = graph.conv(x, _round_filters(32, VARIANTS[feature_extractor_name][0]), 3, stride=2)
            x = ends["stem"] = tf.nn.swish(graph.batch_norm(stem, "tpu_batch_normalization"))
        reduction = 0
        for i, block in enumerate(blocks):
            with v1.variable_scope(f"blocks_{i}"):
                x = ends[f"block_{i}"] = graph.mbconv(x, *block)
            if i == len(blocks) - 1 or blocks[i + 1][1] > 1:
                reduction += 1
                ends[f"reduction_{reduction}"] = x
    filters = VARIANTS[feature_extractor_name][3]
    with v1.variable_scope("decode"):
        decoded = ends["reduction_4"]
        if skip_decoding:
            with v1.variable_scope("decode_skip_connections"):
                decoded = _skip_decoder(graph, decoded, ends["reduction_2"], images, filters,
                                        len(blocks))
        for i in sorted(rsd, reverse=True):
            skip = ends[f"reduction_{i}"]
            with v1.variable_scope(f"decode_skip_connections_{i - 1}"):
                up = _resize_align_corners(decoded, tf.shape(skip)[1:3])
                cat = tf.concat([up, skip], -1)
                if int(up.shape[-1]) != filters:
                    up = graph.decoder_conv(up, filters, 1)
                b0 = graph.decoder_conv(cat, filters, 1)
                b1 = graph.decoder_conv(cat, filters, 3, dilation=2)
                b2 = tf.tile(tf.reduce_mean(cat, [1, 2], keepdims=True),
                             [1, tf.shape(cat)[1], tf.shape(cat)[2], 1])
                decoded = graph.decoder_conv(tf.concat([b0, b1, b2], -1), filters, 3) + up
        ends["decoded"] = decoded
        head = graph.conv(decoded, num_outputs, 1, bias=True, name="final_layer_weights", std=1.0)
    ends["logits"] = _resize_align_corners(head, tf.shape(images)[1:3])
    ends["probabilities"] = tf.nn.softmax(ends["logits"])
    return ends, graph.values


def write_synthetic_checkpoint(out_dir: str, *, feature_extractor_name: str = "efficientnet-b0",
                               rsd: tuple[int, ...] = (2, 4), num_outputs: int = 2,
                               skip_decoding: bool = False, seed: int = 0,
                               step: int = 0, optimizer: str | None = "adam", ema: bool = False,
                               global_step: bool = False, probe_images: np.ndarray | None = None
                               ) -> dict[str, np.ndarray]:
    """Write a reference-format TF1 checkpoint (`checkpoint`, `model.ckpt-<step>.*`) to `out_dir`.

    Args:
        out_dir: directory to write (created if missing).
        feature_extractor_name, rsd, num_outputs, skip_decoding: the architecture, as in
            `build_reference_graph`.
        seed: seed of the random variable values.
        step: global step in the file name, as the reference's Saver writes it.
        optimizer: "adam" adds the slots and beta powers of the reference's inner Adam (beta1 = 0),
            "momentum" Momentum slots, None nothing (plain SGD has no state).
        ema: add ExponentialMovingAverage shadow variables (as ImageNet EfficientNet checkpoints have).
        global_step: add a `global_step` variable.
        probe_images: optional float32 (N, S, S, 3) in [0, 255] to run through the reference graph.
    Returns:
        {endpoint name: value} of the reference forward pass on `probe_images` ({} without them).
    """
    size = None if probe_images is None else probe_images.shape[1]
    os.makedirs(out_dir, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, (None, size, size, 3), name="X")
        ends, values = build_reference_graph(images, np.random.default_rng(seed),
                                             feature_extractor_name=feature_extractor_name,
                                             rsd=rsd, num_outputs=num_outputs,
                                             skip_decoding=skip_decoding)
        # The optimizer only has to create its state variables; zero gradients avoid a backward graph.
        optimizers = {"adam": lambda: v1.train.AdamOptimizer(1e-3, beta1=0.0),
                      "momentum": lambda: v1.train.MomentumOptimizer(1e-3, 0.9), None: None}
        if optimizer not in optimizers:
            raise ValueError(f"optimizer must be 'adam', 'momentum' or None. Received: {optimizer!r}")
        if optimizer is not None:
            optimizers[optimizer]().apply_gradients(
                [(tf.zeros_like(v), v) for v in v1.trainable_variables()])
        if ema:
            v1.train.ExponentialMovingAverage(0.999).apply(list(values))
        if global_step:
            v1.train.get_or_create_global_step()
        # One feed for all values: per-variable assign ops would grow the graph between runs.
        feeds = {var: v1.placeholder(tf.float32, value.shape) for var, value in values.items()}
        load = tf.group(*[var.assign(ph) for var, ph in feeds.items()])
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(load, {ph: values[var] for var, ph in feeds.items()})
            outputs = {} if probe_images is None else sess.run(
                ends, {images: probe_images.astype(np.float32)})
            v1.train.Saver(max_to_keep=1).save(sess, os.path.join(out_dir, "model.ckpt"),
                                               global_step=step, write_meta_graph=False)
    return outputs


def save_tensors(out_dir: str, tensors: dict[str, np.ndarray], step: int = 0) -> str:
    """Write named tensors as a TF1 checkpoint with `tf.compat.v1.train.Saver` (any names, shapes).

    Args:
        out_dir: directory to write (created if missing).
        tensors: {TF1 variable name: value}, e.g. a checkpoint read back and then edited.
        step: global step in the `model.ckpt-<step>` file name.
    Returns:
        The checkpoint prefix written.
    """
    os.makedirs(out_dir, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        feeds, variables = {}, {}
        for i, (name, value) in enumerate(tensors.items()):
            value = np.asarray(value)
            variables[name] = v1.Variable(tf.zeros(value.shape, value.dtype), name=f"v{i}")
            feeds[v1.placeholder(value.dtype, value.shape)] = (variables[name], value)
        load = tf.group(*[var.assign(ph) for ph, (var, _) in feeds.items()])
        with v1.Session(graph=graph) as sess:
            sess.run(load, {ph: value for ph, (_, value) in feeds.items()})
            # A dict var_list saves each variable under its key, whatever its graph name.
            return v1.train.Saver(variables).save(sess, os.path.join(out_dir, "model.ckpt"),
                                                   global_step=step, write_meta_graph=False)


def pack_tar_gz(checkpoint_dir: str, tar_path: str) -> str:
    """Pack a checkpoint directory as `<name>.tar.gz` with the directory as its single top folder.

    Args:
        checkpoint_dir: directory written by `write_synthetic_checkpoint`.
        tar_path: output path, e.g. "EfficientLab-6-3_FOMAML-star_checkpoint.tar.gz".
    Returns:
        tar_path.
    """
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(checkpoint_dir, arcname=os.path.basename(os.path.normpath(checkpoint_dir)))
    return tar_path


def main(argv: list[str] | None = None) -> None:
    """CLI: write a synthetic reference-format checkpoint (random values, real names and shapes)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out_dir", required=True, help="checkpoint directory to write")
    p.add_argument("--feature_extractor_name", default="efficientnet-b0", choices=sorted(VARIANTS))
    p.add_argument("--rsd", type=int, nargs="*", default=[2, 4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=49999, help="step in the model.ckpt-<step> name")
    p.add_argument("--tar_gz", default=None, help="also pack the directory into this .tar.gz")
    a = p.parse_args(argv)
    write_synthetic_checkpoint(a.out_dir, feature_extractor_name=a.feature_extractor_name,
                               rsd=tuple(a.rsd), seed=a.seed, step=a.step)
    print(f"wrote synthetic TF1 checkpoint {a.out_dir}/model.ckpt-{a.step} "
          f"({a.feature_extractor_name}, rsd {' '.join(map(str, a.rsd))}, random values)")
    if a.tar_gz:
        print(f"packed {pack_tar_gz(a.out_dir, a.tar_gz)}")


if __name__ == "__main__":
    main()
