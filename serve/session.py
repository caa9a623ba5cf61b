"""What the page does, without the page: one browser session's examples, images and results.

Every handler takes a `Session` and plain values (numpy arrays, file paths), raises `UserError`
with the message the page shows, and writes only into the session's own folder under the
server's output folder:

    <serve_dir>/<session>/examples/<n>.png, <n>_mask.png   the examples as added
    <serve_dir>/<session>/results/<stem>_mask.png          0/255, each image's own size
    <serve_dir>/<session>/masks.zip, weights.zip            the downloads
    <serve_dir>/<session>/weights/                          the adapted weights (from_checkpoint)

The model is shared by all sessions, so `segment` holds the server's lock from the adaptation
to the saved weights.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from adapt.predictions import overlay
from errors import UserError
from segmenter.api import Segmenter
from segmenter.images import as_pair, as_rgb, read_rgb

MAX_EXAMPLES = 10
MAX_PIXELS = 25_000_000  # 5000 x 5000: larger photos are refused, not silently shrunk
MAX_STEPS = 1000
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Example:
    """A painted (or uploaded) example: uint8 RGB image and its {0, 1} mask."""

    image: np.ndarray
    mask: np.ndarray


@dataclass
class Result:
    """One segmented image: its name, the image, its 0/255 mask and the mask's path."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    path: str

    @property
    def fraction(self) -> float:
        """The foreground fraction of the mask."""
        return float((self.mask > 0).mean())


@dataclass
class Session:
    """One browser session's state and folder.

    Args:
        root: the server's output folder.
        session_id: the page's id of the session (anything else gets a fresh id).
    """

    root: str
    session_id: str = ""
    examples: list[Example] = field(default_factory=list)
    queries: list[tuple[str, np.ndarray]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    runs: int = 0  # Segment presses that finished

    def __post_init__(self):
        if not _SESSION_ID.match(self.session_id or ""):
            self.session_id = uuid.uuid4().hex

    @property
    def folder(self) -> str:
        """<serve_dir>/<session id>: the only place this session writes."""
        return os.path.join(os.path.abspath(self.root), self.session_id)

    def path(self, *parts: str) -> str:
        """A path in the session's folder (its parent folders created)."""
        path = os.path.join(self.folder, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


def _check_size(image: np.ndarray, what: str) -> None:
    height, width = image.shape[:2]
    if height * width > MAX_PIXELS:
        raise UserError(f"{what} is {width}x{height} pixels, over the page's limit of "
                        f"{MAX_PIXELS // 1_000_000} megapixels; shrink it first.")


def painted_mask(layers, height: int, width: int) -> np.ndarray:
    """{0, 1} mask of what was painted: any stroke in any layer (eraser strokes removed).

    Args:
        layers: the editor's layers, RGBA arrays (painted pixels have alpha > 0).
        height, width: the example image's size (a layer of another size is resized to it).

    Returns:
        uint8 (height, width) in {0, 1}.
    """
    mask = np.zeros((height, width), bool)
    for layer in layers or ():
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[-1] != 4:
            continue
        alpha = layer[..., 3] > 0
        if alpha.shape != mask.shape:
            alpha = np.asarray(Image.fromarray(alpha.astype(np.uint8) * 255).resize(
                (width, height), Image.NEAREST)) > 0
        mask |= alpha
    return mask.astype(np.uint8)


def add_example(session: Session, image, layers=None, uploaded_mask=None) -> str:
    """Add an example: the image with its painted strokes, or with an uploaded mask.

    Args:
        session: the browser session.
        image: the example image (array, any mode), or None.
        layers: the editor's paint layers (RGBA arrays).
        uploaded_mask: a mask uploaded instead of painting (array or PIL image), or None.

    Returns:
        the message the page shows.

    Raises:
        UserError: no image, too large, nothing painted, everything painted, too many examples.
    """
    if image is None:
        raise UserError("Upload an example image first, then paint the object on it.")
    if len(session.examples) >= MAX_EXAMPLES:
        raise UserError(f"{MAX_EXAMPLES} examples at most: remove one before adding another.")
    rgb = as_rgb(image, "The example image")
    _check_size(rgb, "The example image")
    if uploaded_mask is not None:
        rgb, mask = as_pair(rgb, uploaded_mask, "The uploaded mask")
    else:
        mask = painted_mask(layers, *rgb.shape[:2])
    if not mask.any():
        raise UserError("Nothing is painted on this example: paint the object with the brush "
                        "(or upload its mask), then add it.")
    if mask.all():
        raise UserError("The mask covers the whole image: paint only the object (the eraser "
                        "takes paint away), then add it.")
    session.examples.append(Example(image=rgb, mask=mask))
    n = len(session.examples)
    Image.fromarray(rgb).save(session.path("examples", f"{n}.png"))
    Image.fromarray(mask * np.uint8(255)).save(session.path("examples", f"{n}_mask.png"))
    return f"Example {n} added ({100 * mask.mean():.1f}% of it is the object)."


def remove_example(session: Session, index: int) -> str:
    """Remove example `index` (0-based); returns the page's message."""
    if not 0 <= index < len(session.examples):
        raise UserError("Pick an example in the gallery first.")
    session.examples.pop(index)
    return f"Example {index + 1} removed; {len(session.examples)} left."


def _unique(name: str, taken: set) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(name))[0]) or "image"
    candidate, k = stem, 2
    while candidate in taken:
        candidate, k = f"{stem}_{k}", k + 1
    return candidate


def add_images(session: Session, paths) -> str:
    """Add images to segment (uploaded files); files that are not images are reported.

    Args:
        session: the browser session.
        paths: uploaded file paths.

    Returns:
        the page's message.

    Raises:
        UserError: no file was an image.
    """
    added, refused = 0, []
    taken = {name for name, _ in session.queries}
    for path in paths or ():
        label = os.path.basename(str(path))
        try:
            image = read_rgb(str(path))
            _check_size(image, label)
        except UserError as e:  # unreadable: not an image; readable: too large
            refused.append(f"{label} is not an image" if str(e).startswith("Cannot read")
                           else str(e))
            continue
        name = _unique(label, taken)
        taken.add(name)
        session.queries.append((name, image))
        added += 1
    if not added and refused:
        raise UserError("Not added: " + "; ".join(refused))
    message = f"{len(session.queries)} image(s) to segment"
    return message + (f"; not added: {'; '.join(refused)}" if refused else "") + "."


def _zip(folder_or_files, target: str) -> str:
    """Write a zip atomically (temporary name in the same folder, then renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=".zip-", dir=os.path.dirname(target))
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in folder_or_files:
            archive.write(path, arcname)
    os.replace(tmp, target)
    return target


def segment(session: Session, seg: Segmenter, lock: threading.Lock, *, steps, learning_rate,
            on_progress: Callable[[float, str], None] | None = None) -> tuple[str, str]:
    """Adapt to the session's examples, segment its images, write masks and weights.

    Args:
        session: the browser session.
        seg: the server's segmenter (shared; held under `lock`).
        lock: the server's model lock.
        steps: adaptation steps.
        learning_rate: adaptation learning rate.
        on_progress: (fraction done, description) callback.

    Returns:
        (masks.zip path, weights.zip path).

    Raises:
        UserError: no example, no image, or bad steps / learning rate.
    """
    if not session.examples:
        raise UserError("Add at least one example (an image with the object painted) first.")
    if not session.queries:
        raise UserError("Add the images to segment first.")
    try:
        steps, learning_rate = int(steps), float(learning_rate)
    except (TypeError, ValueError) as e:
        raise UserError(f"Steps must be a whole number and the learning rate a number "
                        f"({e}).") from e
    if not 0 <= steps <= MAX_STEPS or not 0 < learning_rate < 1:
        raise UserError(f"Steps must be in 0..{MAX_STEPS} and the learning rate in (0, 1). "
                        f"Received: {steps}, {learning_rate}")
    report = on_progress or (lambda fraction, text: None)
    with lock:
        seg.configure(steps=steps, learning_rate=learning_rate)
        report(0.0, f"Adapting to {len(session.examples)} example(s)")
        seg.fit([e.image for e in session.examples], [e.mask for e in session.examples],
                progress=lambda done, total: report(0.5 * done / total,
                                                    f"Adapting: step {done}/{total}"))
        masks = seg.predict([image for _, image in session.queries],
                            progress=lambda done, total: report(
                                0.5 + 0.45 * done / total, f"Segmenting: image {done}/{total}"))
        report(0.95, "Writing the masks and the adapted weights")
        results_dir = os.path.join(session.folder, "results")
        shutil.rmtree(results_dir, ignore_errors=True)
        session.results = []
        for (name, image), mask in zip(session.queries, masks):
            path = session.path("results", f"{name}_mask.png")
            Image.fromarray(mask).save(path)
            session.results.append(Result(name=name, image=image, mask=mask, path=path))
        weights = os.path.join(session.folder, "weights")
        shutil.rmtree(weights, ignore_errors=True)
        seg.save(weights, task=f"page session {session.session_id}")
    session.runs += 1
    masks_zip = _zip([(r.path, os.path.basename(r.path)) for r in session.results],
                     session.path("masks.zip"))
    files = [(os.path.join(root, f), os.path.relpath(os.path.join(root, f), session.folder))
             for root, _, names in os.walk(weights) for f in sorted(names)]
    return masks_zip, _zip(files, session.path("weights.zip"))


def gallery(session: Session) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption "name: foreground %") of every result."""
    return [(overlay(r.image, r.mask), f"{r.name}: {100 * r.fraction:.1f}%")
            for r in session.results]


def example_gallery(session: Session) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) of every example."""
    return [(overlay(e.image, e.mask, colour=(0, 200, 0)), f"example {i}")
            for i, e in enumerate(session.examples, 1)]


def result_layer(session: Session, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A result as (image, RGBA paint layer of its mask), to correct it and add it as an example.

    Args:
        session: the browser session.
        index: 0-based result index.

    Returns:
        (uint8 RGB image, uint8 RGBA layer: red where the mask is, transparent elsewhere).
    """
    if not 0 <= index < len(session.results):
        raise UserError("Pick a result in the gallery first.")
    result = session.results[index]
    layer = np.zeros(result.mask.shape + (4,), np.uint8)
    layer[result.mask > 0] = (255, 0, 0, 255)
    return result.image, layer
