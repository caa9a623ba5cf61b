"""The key of a set of adapted weights: what they are a function of (the init's weights, the
examples, the settings), so a masks folder knows which weights wrote it and a rerun can reuse
saved weights instead of fitting again (the same init, examples and settings give the same
weights: `Segmenter.fit` draws from a generator keyed by its seed)."""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np

_CHUNK = 1 << 20


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def weights_digest(path: str) -> str:
    """sha256 over the files that hold an init's weights (a file, a folder's files, or a TF1
    prefix's files), by content: a copy of the init has the same digest."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                       if f != "LOCK" and ".tmp-" not in f)
        root = path
    else:
        files = [path] if os.path.isfile(path) else sorted(glob.glob(glob.escape(path) + ".*"))
        root = os.path.dirname(path)
    h = hashlib.sha256()
    for name in files:
        h.update(os.path.relpath(name, root).encode("utf-8") + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def examples_digest(images, masks) -> str:
    """sha256 over the examples as `fit` sees them (decoded pixels and {0, 1} masks)."""
    h = hashlib.sha256()
    for image, mask in zip(images, masks):
        for array in (np.ascontiguousarray(image), np.ascontiguousarray(mask)):
            h.update(str(array.shape).encode("ascii"))
            h.update(array.tobytes())
    return h.hexdigest()


def settings_digest(config: dict) -> str:
    """sha256 of a settings config (Settings.to_config()), key order aside."""
    return _digest(json.dumps(config, sort_keys=True))


def key_of(parts: dict) -> str:
    """The key of {"init": ..., "examples": ..., "settings": ...}."""
    return _digest(json.dumps({k: parts.get(k) for k in ("init", "examples", "settings")},
                              sort_keys=True))
