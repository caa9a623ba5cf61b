"""Load the paper's TF1 checkpoints (EfficientLab-6-3_FOMAML-star_checkpoint) into Keras EfficientLab.

The reference (ml4ai/mliis, TF 1.15) saves every graph variable with `tf.train.Saver`. We read the
file
with `tf.train.load_checkpoint` (no TF1 graph needed) and fill each Keras weight from exactly one
tensor, by the name mapping of `storage/tf1_names.py`. Nothing is skipped silently: a Keras weight
with no tensor, a tensor matching no weight, or a shape mismatch raises one ValueError listing them
all, and nothing is assigned until everything matched. Tensors left out on purpose (optimizer slots,
EMA shadows, `global_step`, blocks the reference builds but never uses, the head under
`--do_not_restore_final_layer_weights`) are counted by reason in the returned report.
"""
from __future__ import annotations

import glob
import os
import re
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field

from absl import logging
import keras
import tensorflow as tf

from errors import UserError
from models.config import IMAGENET, ModelConfig
from models.restore import restore_backbone_weights
from storage import tf1_names

REFERENCE_SCOPES = ("efficientnet-b", "decode/")  # top scopes of the reference's variables
TAR_SUFFIXES = (".tar.gz", ".tgz")
MAX_LISTED = 40  # names listed per category in a mismatch error
# Keras weights that are not variables in the reference graph (there they are constants or feeds).
KERAS_ONLY = {"final_dropout": "run-time dropout rate (a placeholder feed in the reference)"}
KEEP_NORMALIZATION = "input normalization constants (fixed ImageNet mean/std in the reference graph)"
KEEP_FINAL_LAYER = "final layer kept as initialized (--do_not_restore_final_layer_weights)"
KEEP_DECODER = "decoder and head kept as initialized (backbone-only restore)"


@dataclass(frozen=True)
class TF1RestoreReport:
    """What a TF1 restore did: tensors loaded per group, tensors and weights left out per reason."""

    checkpoint: str
    mapped: dict[str, int]  # "backbone" / "decoder" / "head" -> tensors loaded
    ignored: dict[str, tuple[str, ...]] = field(default_factory=dict)  # reason -> TF1 names
    kept: dict[str, tuple[str, ...]] = field(default_factory=dict)  # reason -> Keras weights

    @property
    def num_mapped(self) -> int:
        """Number of Keras weights filled from the checkpoint."""
        return sum(self.mapped.values())

    def summary(self) -> str:
        """Multi-line human-readable account, for the run log."""
        lines = [f"restored TF1 checkpoint {self.checkpoint}: {self.num_mapped} tensors "
                 f"({', '.join(f'{g} {n}' for g, n in self.mapped.items())})"]
        lines += [f"  ignored {len(v)} checkpoint tensors: {r}" for r, v in self.ignored.items()]
        lines += [f"  kept {len(v)} Keras weights: {r}" for r, v in self.kept.items()]
        return "\n".join(lines)


def _prefix_in(directory: str) -> str | None:
    """The checkpoint prefix a TF1 directory points to (its `checkpoint` file, else the newest)."""
    state = os.path.join(directory, "checkpoint")
    if os.path.isfile(state):
        with open(state) as f:
            m = re.search(r'model_checkpoint_path:\s*"([^"]+)"', f.read())
        # The reference's state file holds absolute paths of the authors' machine: use the basename.
        if m and os.path.isfile(os.path.join(directory, os.path.basename(m.group(1)) + ".index")):
            return os.path.join(directory, os.path.basename(m.group(1)))
    prefixes = [p[:-len(".index")] for p in glob.glob(os.path.join(directory, "*.index"))]
    if len(prefixes) <= 1:
        return prefixes[0] if prefixes else None

    def step(prefix: str) -> int:
        m = re.search(r"-(\d+)$", prefix)
        return int(m.group(1)) if m else -1
    newest = max(prefixes, key=step)
    if step(newest) < 0 or [step(p) for p in prefixes].count(step(newest)) > 1:
        raise ValueError(f"Checkpoint directory {directory} holds several checkpoints "
                         f"{sorted(map(os.path.basename, prefixes))} and no `checkpoint` file "
                         "saying which to use. Pass the prefix, e.g. DIR/model.ckpt-49999.")
    return newest


def _find_prefix(path: str) -> str | None:
    """TF1 checkpoint prefix for a directory, a prefix, or a `.index` file; None if there is none."""
    if path.endswith(".index") and os.path.isfile(path):
        return path[:-len(".index")]
    if os.path.basename(path) == "checkpoint" and os.path.isfile(path):  # the TF1 state file
        return _prefix_in(os.path.dirname(path) or ".")
    if os.path.isfile(path + ".index"):
        return path
    return _prefix_in(path) if os.path.isdir(path) else None


def _has_reference_scopes(prefix: str) -> bool:
    return any(name.startswith(REFERENCE_SCOPES) for name, _ in tf.train.list_variables(prefix))


def is_tf1_checkpoint(path: str) -> bool:
    """Whether `path` is a reference TF1 checkpoint (directory, prefix, or `.tar.gz` archive).

    Args:
        path: a `--checkpoint` / `--pretrained` location.
    Returns:
        True for a `.tar.gz`/`.tgz` file, or a TF1 checkpoint whose variables live under the
        reference's scopes (`efficientnet-b*/`, `decode/`); False otherwise (e.g. our own checkpoints).
    """
    if os.path.isfile(path) and path.endswith(TAR_SUFFIXES):
        return True
    prefix = _find_prefix(path)
    if prefix is None:
        return False
    try:
        return _has_reference_scopes(prefix)
    except tf.errors.OpError as e:  # an .index that is there but does not parse is corrupt
        raise UserError(f"TF1 checkpoint {prefix}.index is corrupt or truncated "
                        f"({e.message.splitlines()[0]}); unpack the checkpoint again.") from e


def _unpack(tar_path: str, into: str) -> str:
    """Extract a checkpoint archive and return the shallowest directory holding a checkpoint."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            unsafe = [m.name for m in tar.getmembers()
                      if not (m.isfile() or m.isdir()) or os.path.isabs(m.name)
                      or ".." in m.name.replace("\\", "/").split("/")]
            if unsafe:  # a checkpoint is plain files: links, devices and ../ are refused
                raise UserError(f"{tar_path} holds {len(unsafe)} member(s) that are not plain "
                                f"files inside the archive (e.g. {unsafe[0]!r}); refusing to "
                                f"unpack it. Unpack it yourself and pass the folder.")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        reason = " ".join(str(e).split())  # tarfile lists one line per method it tried
        raise UserError(f"{tar_path} is not a readable .tar.gz archive ({type(e).__name__}: "
                        f"{reason}); download it again.") from e
    found = sorted({os.path.dirname(p) for p in
                    glob.glob(os.path.join(into, "**", "*.index"), recursive=True)})
    if not found:
        raise ValueError(f"{tar_path} holds no TF1 checkpoint (no *.index file inside).")
    depth = min(d.count(os.sep) for d in found)
    top = [d for d in found if d.count(os.sep) == depth]
    if len(top) > 1:
        raise ValueError(f"{tar_path} holds checkpoints in several folders "
                         f"{[os.path.relpath(d, into) for d in top]}; unpack it and pass one folder.")
    return top[0]


@contextmanager
def open_tf1_checkpoint(path: str):
    """Open a TF1 checkpoint given as a directory, a prefix or a `.tar.gz` (unpacked to a temp dir).

    Args:
        path: the `--checkpoint` value.
    Yields:
        (prefix, reader): the checkpoint prefix and its `tf.train.load_checkpoint` reader; an
        archive's temporary folder is removed on exit.
    """
    if not os.path.exists(path) and not os.path.isfile(path + ".index"):
        raise FileNotFoundError(f"--checkpoint {path} does not exist. Give the unpacked checkpoint "
                                "folder or the .tar.gz archive (see the README).")
    with tempfile.TemporaryDirectory(prefix="metaseg_tf1_") as tmp:
        source = _unpack(path, tmp) if os.path.isfile(path) and path.endswith(TAR_SUFFIXES) else path
        prefix = _find_prefix(source)
        if prefix is None:
            raise ValueError(f"--checkpoint {path} is not a TF1 checkpoint: no `checkpoint` file or "
                             "*.index file found.")
        try:
            reader = tf.train.load_checkpoint(prefix)
        except tf.errors.OpError as e:
            raise ValueError(f"Could not read TF1 checkpoint {prefix} (from --checkpoint {path}): "
                             f"{e.message}") from e
        try:
            yield prefix, reader
        except (tf.errors.OpError, IndexError) as e:  # a truncated .data file, read lazily
            if isinstance(e, IndexError) and "Read less bytes" not in str(e):
                raise
            reason = (e.message if isinstance(e, tf.errors.OpError) else str(e)).splitlines()[0]
            raise UserError(f"TF1 checkpoint {prefix} is truncated or corrupt ({reason}); "
                            f"unpack it again.") from e


def _leaf_layers(model):
    """Layers holding weights, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = [f"    ... and {len(items) - MAX_LISTED} more"] if len(items) > MAX_LISTED else []
    return [f"  {len(items)} {title}:"] + [f"    {i}" for i in items[:MAX_LISTED]] + more


def restore_tf1_checkpoint(model: keras.Model, path: str, model_cfg, *,
                           restore_final_layer: bool = True,
                           backbone_only: bool = False) -> TF1RestoreReport:
    """Fill a Keras EfficientLab from a reference TF1 checkpoint, every weight from one tensor.

    Args:
        model: EfficientLab built by `models.build.build_model(model_cfg)`.
        path: checkpoint directory, prefix, or `.tar.gz` archive.
        model_cfg: the ModelConfig the model was built from (model_name, feature_extractor_name, rsd).
        restore_final_layer: False loads everything but `decode/final_layer_weights`
            (--do_not_restore_final_layer_weights).
        backbone_only: read only the EfficientNet scope (e.g. an ImageNet TPU EfficientNet checkpoint
            for --restore_efficient_net_weights_from); the decoder and head keep their values.
    Returns:
        TF1RestoreReport with the tensors loaded per group and those left out per reason.
    Raises:
        ValueError: listing every Keras weight without a tensor, every tensor without a weight and
            every shape mismatch; the model is left unchanged.
    """
    if model_cfg.model_name != "efficientlab":
        raise ValueError("TF1 checkpoints of the reference hold EfficientLab weights only. "
                         f"Received: --model_name {model_cfg.model_name}")
    if getattr(model_cfg, "spatial_pyramid_pooling", False):  # not in the published checkpoint
        raise ValueError("The TF1 loader maps EfficientLab with RSD modules and --skip_decoding "
                         "only. Received: --spatial_pyramid_pooling")
    fe = model_cfg.feature_extractor_name
    weights, kept = {}, {}
    for layer in _leaf_layers(model):
        for w in layer.weights:
            if isinstance(layer, keras.layers.Normalization):
                kept.setdefault(KEEP_NORMALIZATION, []).append(w.path)
            elif layer.name in KERAS_ONLY:
                kept.setdefault(KERAS_ONLY[layer.name], []).append(w.path)
            elif (layer.name, w.name) in weights:
                raise ValueError(f"Two weights named {layer.name}/{w.name} in the model: the TF1 "
                                 "mapping needs unique layer names.")
            else:
                weights[(layer.name, w.name)] = w
    with open_tf1_checkpoint(path) as (prefix, reader):
        shapes = reader.get_variable_to_shape_map()
        mapping, unknown = tf1_names.keras_to_tf1_names(list(weights), fe, list(shapes))
        for key, (_, group) in list(mapping.items()):
            reason = (KEEP_DECODER if backbone_only and group != "backbone" else
                      KEEP_FINAL_LAYER if not restore_final_layer and group == "head" else None)
            if reason:
                kept.setdefault(reason, []).append(weights[key].path)
                del mapping[key]
        ignored, unused, wanted, shared = {}, [], {}, []
        for key, (name, _) in mapping.items():
            if name in wanted:  # two Keras weights claiming one tensor: a mapping bug, never silent
                shared.append(f"{weights[wanted[name]].path} and {weights[key].path} <- {name}")
            wanted[name] = key
        for name in sorted(set(shapes) - set(wanted)):
            reason = tf1_names.ignore_reason(name, fe, restore_final_layer=restore_final_layer,
                                             backbone_only=backbone_only)
            if reason:
                ignored.setdefault(reason, []).append(name)
            else:
                unused.append(f"{name} {shapes[name]}")
        missing = [f"{weights[k].path} <- {n} (not in checkpoint)" for n, k in wanted.items()
                   if n not in shapes]
        missing += [f"{weights[k].path} (no TF1 name for this layer)" for k in unknown]
        bad_shape = [f"{weights[k].path} {tuple(weights[k].shape)} <- {n} {shapes[n]}"
                     for n, k in wanted.items()
                     if n in shapes and tuple(shapes[n]) != tuple(weights[k].shape)]
        if missing or unused or bad_shape or shared:
            found = tf1_names.describe_checkpoint(list(shapes))
            raise ValueError("\n".join(
                [f"TF1 checkpoint {prefix} does not match the Keras model "
                 f"({fe}, --rsd {' '.join(map(str, model_cfg.rsd))}); the checkpoint has "
                 f"{', '.join(found['feature_extractors']) or 'no EfficientNet scope'}, "
                 f"RSD modules for reductions {found['rsd']}."]
                + _listed("Keras weights without a checkpoint tensor", missing)
                + _listed("checkpoint tensors matching no Keras weight", unused)
                + _listed("shape mismatches (Keras <- checkpoint)", bad_shape)
                + _listed("checkpoint tensors claimed by two Keras weights", shared)
                + ["Fix: build the model with the flags the checkpoint was trained with "
                   "(--feature_extractor_name, --rsd), or pass --do_not_restore_final_layer_weights "
                   "for a head with another number of outputs."]))
        counts: dict[str, int] = {}
        for name, key in wanted.items():  # every check passed: now assign
            weights[key].assign(reader.get_tensor(name).astype(weights[key].dtype))
            group = mapping[key][1]
            counts[group] = counts.get(group, 0) + 1
    return TF1RestoreReport(
        checkpoint=path if path.endswith(TAR_SUFFIXES) else prefix,
        mapped={g: counts[g] for g in ("backbone", "decoder", "head") if g in counts},
        ignored={r: tuple(v) for r, v in ignored.items()},
        kept={r: tuple(v) for r, v in kept.items()})


def restore_backbone(model: keras.Model, model_cfg: ModelConfig) -> None:
    """Fill the EfficientNet encoder from `--restore_efficient_net_weights_from`, if it names
    anything: a Keras weights file or `imagenet` (models.restore), or a reference TF1 (TPU
    EfficientNet) checkpoint, read backbone-only.

    Args:
        model: the model `models.build.build_model(model_cfg)` built.
        model_cfg: its config.

    Raises:
        ValueError: the flag with a model that has no EfficientNet encoder, or a file that does
            not fit it.
    """
    path = model_cfg.restore_efficient_net_weights_from
    if not path:
        return
    if model_cfg.model_name != "efficientlab":
        raise ValueError("--restore_efficient_net_weights_from applies to --model_name "
                         f"efficientlab only. Received: --model_name {model_cfg.model_name}")
    if path == IMAGENET or not is_tf1_checkpoint(path):
        restore_backbone_weights(model, path, model_cfg.feature_extractor_name)
        return
    report = restore_tf1_checkpoint(model, path, model_cfg, backbone_only=True)
    logging.info(f"Restored the EfficientNet backbone from TF1 checkpoint {report.checkpoint}: "
                 f"{report.mapped}")
