"""Restore EfficientLab's EfficientNet layers from a Keras weights file.

Accepted (`--restore_efficient_net_weights_from PATH | imagenet`):
* `imagenet`: Keras' ImageNet file of the backbone, fetched the way `keras.applications` does
  (`keras.utils.get_file`: downloaded once into `$KERAS_HOME/models/`, default `~/.keras/models/`,
  and checked against the md5 Keras publishes), then read as below;
* the standard Keras ImageNet files `efficientnetb0_notop.h5` / `efficientnetb3_notop.h5` (legacy
  HDF5 layout: one group per layer name, weights in the layer's order); a full-model `.h5` with a
  `model_weights` group works too;
* a Keras 3 `.weights.h5` of the encoder (e.g. from `save_backbone_weights`), whose per-layer
  groups carry the layer name.
Weights are matched by layer name, then by position within the layer (Keras' own rule: Keras 3
calls the depthwise kernel `kernel`, Keras 2 files `depthwise_kernel`), and every shape is checked.
Every backbone layer of the model must be filled; the file's extra layers (the blocks after the
truncation, the `top_*` head) are reported, not loaded. The input Normalization is left alone: the
Keras ImageNet files store the std where the variance belongs (tensorflow/tensorflow#49930), and
the model already holds the exact ImageNet mean and variance.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass

import h5py
import keras
import numpy as np

from models.config import IMAGENET
from models.efficientlab import EFFICIENTNET_SKIPS
from models.layers import leaf_layers

BACKBONE_LAYER = re.compile(r"^(stem|block\d+[a-z])_")
STEM_WIDTH = {32: "efficientnet-b0", 40: "efficientnet-b3"}  # stem_conv filters -> backbone
MAX_LISTED = 30
FLAG = "--restore_efficient_net_weights_from"
# Where and as what keras.applications.EfficientNetB0/B3(include_top=False) get their weights:
# BASE_WEIGHTS_PATH and the md5 of WEIGHTS_HASHES in Keras' applications/efficientnet.py.
IMAGENET_ORIGIN = "https://storage.googleapis.com/keras-applications/"
IMAGENET_FILES = {"efficientnet-b0": ("efficientnetb0_notop.h5",
                                      "50bc09e76180e00e4465e1a485ddc09d"),
                  "efficientnet-b3": ("efficientnetb3_notop.h5",
                                      "af6d107764bb5b1abb91932881670226")}


@dataclass(frozen=True)
class BackboneRestore:
    """What a backbone restore did."""

    path: str
    layers: int  # backbone layers filled
    weights: int  # arrays assigned
    ignored: tuple[str, ...]  # layers in the file that the truncated encoder does not have


def _decode(names) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def read_layer_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> weight arrays (in the layer's order) from a Keras HDF5 weights file.

    Args:
        path: a legacy Keras `.h5` (weights or full model) or a Keras 3 `.weights.h5`.
    Returns:
        {layer name: [arrays]} for every layer with weights.
    Raises:
        FileNotFoundError / ValueError: a missing file, or one that is not a Keras weights file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{FLAG} {path} does not exist. Give a Keras EfficientNet "
                                "weights file (e.g. ~/.keras/models/efficientnetb0_notop.h5), "
                                f"or {IMAGENET} for Keras' download.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{FLAG} {path} is not an HDF5 file ({e}).") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:  # legacy Keras (2.x) layout
            out = {}
            for layer in _decode(root.attrs["layer_names"]):
                names = _decode(root[layer].attrs.get("weight_names", []))
                if names:
                    out[layer] = [np.asarray(root[layer][n]) for n in names]
            return out
        if "layers" in f:  # Keras 3 layout: .../<class>/vars/<i>, the group naming its layer
            out = {}

            def visit(name, obj):
                if isinstance(obj, h5py.Group) and name.endswith("vars") and len(obj) \
                        and "name" in obj.attrs:
                    out[str(obj.attrs["name"])] = [np.asarray(obj[str(i)]) for i in range(len(obj))]
            f.visititems(visit)
            return out
    raise ValueError(f"{FLAG} {path} is not a Keras weights file: it has neither a `layer_names` "
                     "attribute (Keras .h5) nor a `layers` group (Keras 3 .weights.h5).")


def backbone_layers(model: keras.Model) -> list:
    """The EfficientNet layers of an EfficientLab that hold weights (stem_*, block*_*).

    Args:
        model: an EfficientLab from models.build.build_model.
    Returns:
        list of layers in model order.
    """
    return [layer for layer in leaf_layers(model)
            if BACKBONE_LAYER.match(layer.name) and layer.weights]


def _guess_backbone(weights: dict) -> str:
    stem = weights.get("stem_conv")
    name = STEM_WIDTH.get(stem[0].shape[-1]) if stem else None
    return f" The file looks like {name} weights." if name else ""


def keras_cache_dir() -> str:
    """The folder `keras.utils.get_file` caches in: $KERAS_HOME, else ~/.keras (as Keras)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights(feature_extractor_name: str, cache_dir: str | None = None) -> str:
    """Keras' ImageNet weights file of the backbone, downloaded once and checked by its md5.

    A file already at the cache path is used when its md5 is Keras' and otherwise left as it is
    (Keras would delete it to download again): the user decides what it is.

    Args:
        feature_extractor_name: "efficientnet-b0" or "efficientnet-b3".
        cache_dir: Keras' cache folder (default `keras_cache_dir()`); the file goes to its
            `models/` subfolder, where `keras.applications` keeps it too.
    Returns:
        path of the cached `efficientnetb0_notop.h5` / `efficientnetb3_notop.h5`.
    Raises:
        ValueError: a backbone Keras publishes no such file for.
        OSError: the cached file is another file (its md5 differs), the cache folder cannot be
            written, or the file cannot be downloaded; the one-line message says what to do.
    """
    if feature_extractor_name not in IMAGENET_FILES:
        raise ValueError(f"{FLAG} {IMAGENET} needs --feature_extractor_name one of "
                         f"{sorted(IMAGENET_FILES)}. Received: {feature_extractor_name!r}")
    name, md5 = IMAGENET_FILES[feature_extractor_name]
    cache_dir = cache_dir or keras_cache_dir()
    target = os.path.join(cache_dir, "models", name)
    or_file = f"or pass the file itself: {FLAG} /path/to/{name}"
    if os.path.exists(target):
        found = _md5(target)
        if found == md5:
            return target
        raise OSError(f"{FLAG} {IMAGENET}: {target} is there but its md5 is {found}, not "
                      f"Keras' {md5} (a partial download, or another file); it is left as it is. "
                      f"Move it away and rerun (with internet), put Keras' {name} there, "
                      f"{or_file}.")
    folder = os.path.dirname(target)
    try:  # a probe file, made and removed: the download needs the folder writable
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as e:
        where = "KERAS_HOME" if "KERAS_HOME" in os.environ else "Keras' cache folder"
        raise OSError(f"{FLAG} {IMAGENET}: {where} {cache_dir} cannot be written "
                      f"({e.strerror or e}), so {name} cannot be downloaded into it. Set "
                      f"KERAS_HOME to a writable folder (the file then goes to its models/), "
                      f"{or_file}.") from e
    try:
        # Keras raises a plain Exception for a failed download, ValueError for a wrong md5.
        return keras.utils.get_file(name, IMAGENET_ORIGIN + name, cache_subdir="models",
                                    file_hash=md5, cache_dir=cache_dir)
    except Exception as e:
        reason = " ".join(str(e).split())
        raise OSError(f"{FLAG} {IMAGENET}: could not get {IMAGENET_ORIGIN + name} ({reason}). "
                      f"Without internet, put Keras' {name} (md5 {md5}) at {target}, "
                      f"{or_file}.") from e


def restore_backbone_weights(model: keras.Model, path: str,
                             feature_extractor_name: str | None = None) -> BackboneRestore:
    """Fill EfficientLab's EfficientNet layers from a Keras weights file, all or nothing.

    Args:
        model: an EfficientLab.
        path: the weights file, or "imagenet" (see the module docstring).
        feature_extractor_name: the backbone ("efficientnet-b0" / "efficientnet-b3"): which
            ImageNet file "imagenet" means (default: read from the model), named in errors.
    Returns:
        BackboneRestore with the counts of filled layers/arrays and the file's ignored layers.
    Raises:
        ValueError: listing every backbone layer missing from the file and every weight whose
            count or shape differs; nothing is assigned then.
        OSError: "imagenet" that is neither cached nor downloadable.
    """
    targets = backbone_layers(model)
    if not targets:
        raise ValueError(f"{FLAG} applies to EfficientLab; model {model.name!r} has no "
                         "EfficientNet layers.")
    if path == IMAGENET:
        if feature_extractor_name is None:
            stem = model.get_layer("stem_conv").kernel.shape[-1]
            feature_extractor_name = STEM_WIDTH.get(stem)
        path = imagenet_weights(feature_extractor_name)
    weights = read_layer_weights(path)
    missing, mismatched, pairs = [], [], []
    for layer in targets:
        arrays = weights.get(layer.name)
        if arrays is None:
            missing.append(layer.name)
            continue
        own = layer.weights
        if len(arrays) != len(own):
            mismatched.append(f"{layer.name}: {len(own)} weights "
                              f"{[w.name for w in own]}, file has {len(arrays)}")
            continue
        for w, a in zip(own, arrays):
            if tuple(w.shape) != a.shape:
                mismatched.append(f"{layer.name}/{w.name}: model {tuple(w.shape)}, file {a.shape}")
            else:
                pairs.append((w, a))
    if missing or mismatched:
        lines = [f"{FLAG} {path} does not fit the "
                 f"{feature_extractor_name or 'EfficientNet'} encoder of this model."
                 + _guess_backbone(weights)]
        for title, items in (("backbone layers missing from the file", missing),
                             ("weights with another count or shape", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {i}" for i in items[:MAX_LISTED]]
                if len(items) > MAX_LISTED:
                    lines.append(f"    ... and {len(items) - MAX_LISTED} more")
        lines.append("Fix: pass the file for --feature_extractor_name "
                     f"{feature_extractor_name or '(b0 or b3)'} (Keras' efficientnetb0_notop.h5 / "
                     "efficientnetb3_notop.h5, or a .weights.h5 saved by save_backbone_weights).")
        raise ValueError("\n".join(lines))
    for w, a in pairs:
        w.assign(a.astype(w.dtype))
    names = {layer.name for layer in targets}
    return BackboneRestore(path=path, layers=len(targets), weights=len(pairs),
                           ignored=tuple(sorted(set(weights) - names)))


def save_backbone_weights(model: keras.Model, path: str) -> str:
    """Write the encoder of an EfficientLab (input to the stride-16 endpoint) as `.weights.h5`.

    Args:
        model: an EfficientLab.
        path: output file, ending in `.weights.h5`.
    Returns:
        path.
    """
    names = {layer.name for layer in model.layers}
    # B3 also has a `block5c_add`; its endpoint is the later `block5e_add`
    ends = sorted(skips[4] for skips in EFFICIENTNET_SKIPS.values() if skips[4] in names)
    if not ends:
        raise ValueError(f"Model {model.name!r} is not an EfficientLab (no stride-16 endpoint).")
    encoder = keras.Model(model.input, model.get_layer(ends[-1]).output, name="encoder")
    encoder.save_weights(path)
    return path
