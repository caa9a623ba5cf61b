"""What the page does, without the page: one browser session's examples, images and results.

Every handler takes a `Session` and plain values (uploaded files, numpy arrays), raises
`UserError` with the message the page shows, and writes only into the session's own folder under
the server's output folder:

    <serve_dir>/<session>/examples/<n>.png, <n>_mask.png   the examples as added
    <serve_dir>/<session>/results/                         the masks in the formats chosen
                                                           (segmenter.outputs: <stem>_mask.png
                                                           0/255 at each image's own size,
                                                           overlays, YOLO-seg labels, COCO,
                                                           Label Studio)
    <serve_dir>/<session>/masks.zip, weights.zip            the downloads
    <serve_dir>/<session>/weights/                          the adapted weights (from_checkpoint)

A session's folder name is random (128 bits) and written into no file: the downloads name
nothing of the session. A Segment press writes everything into a hidden staging folder and swaps
it in at the end, so an error (a full disk), a diverged adaptation or a stopped server leaves the
previous results whole and nothing half-written. The model is shared by all sessions, so
`segment` holds the segmenter's lock from the adaptation to the saved weights.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import secrets
import shutil
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from adapt.predictions import overlay
from errors import UserError
from segmenter import outputs
from segmenter.api import Segmenter
from segmenter.images import as_pair, as_rgb
from serve.uploads import open_checked, read_image, upload_name
from storage import atomic

MAX_EXAMPLES = 10
MAX_STEPS = 1000
MAX_NAME = 80  # characters of an uploaded name kept in a result's file name
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What a file name may not hold on common file systems (and the zip's separator), and spaces;
# letters of every script stay.
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f/\\:*?\"<>|]+")


class PressAbandoned(Exception):
    """The server is stopping: the Segment press in progress ends without writing anything."""


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
        session_id: the folder's name; anything but letters, digits, - and _ (or nothing) gets
            a fresh random one. The page always lets it choose.
        owner: the key of the browser that opened it (serve.privacy); "" outside the page.
    """

    root: str
    session_id: str = ""
    owner: str = ""
    examples: list[Example] = field(default_factory=list)
    queries: list[tuple[str, np.ndarray]] = field(default_factory=list)
    query_files: dict[str, str] = field(default_factory=dict)  # name -> its file name, as
    # uploaded (its letters kept): the images' names in the COCO and Label Studio files
    results: list[Result] = field(default_factory=list)
    runs: int = 0  # Segment presses that finished
    last_used: float = field(default_factory=time.time)
    ended: bool = False

    def __post_init__(self):
        if not _SESSION_ID.match(self.session_id or ""):
            self.session_id = secrets.token_hex(16)

    @property
    def folder(self) -> str:
        """<serve_dir>/<session id>: the only place this session writes."""
        return os.path.join(os.path.abspath(self.root), self.session_id)

    def path(self, *parts: str) -> str:
        """A path in the session's folder (its parent folders created)."""
        path = os.path.join(self.folder, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def use(self) -> None:
        """Note a use (an idle session's files are removed after --serve_keep_hours).

        Raises:
            UserError: the session ended (idle too long, or its browser left).
        """
        if self.ended:
            raise UserError("This session has ended (it was idle too long and its files were "
                            "removed); reload the page to start a new one.")
        self.last_used = time.time()


def end_session(session: Session) -> None:
    """Free a session's memory (its examples, images and results); its files stay until the
    idle-files sweep removes them.

    Args:
        session: the session whose browser left or which was idle too long.
    """
    session.examples, session.queries, session.results = [], [], []
    session.ended = True


@contextmanager
def _writing(session: Session):
    """An OSError while writing becomes one line naming the file and --serve_dir."""
    try:
        yield
    except OSError as e:
        # The file's own name: its folders are temporary ones and the session's (private) id.
        name = os.path.basename(os.fsdecode(e.filename)) if e.filename else "the session's files"
        raise UserError(f"Could not write {name} under --serve_dir "
                        f"{os.path.dirname(session.folder)}: {e.strerror or e}; free space on "
                        f"that disk (or ask whoever runs the page), then try again.") from e


def painted_mask(layers, height: int, width: int) -> np.ndarray:
    """{0, 1} mask of what was painted: any stroke in any layer (eraser strokes removed).

    Args:
        layers: the editor's layers: RGBA arrays, or uploaded files (paths or bytes) of them
            (painted pixels have alpha > 0).
        height, width: the example image's size (a layer of another size is resized to it).

    Returns:
        uint8 (height, width) in {0, 1}.
    """
    mask = np.zeros((height, width), bool)
    for k, layer in enumerate(layers or (), 1):
        if not isinstance(layer, np.ndarray):
            layer = np.asarray(open_checked(layer, f"Painted layer {k}").convert("RGBA"))
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
        image: the example image: the uploaded file (path or bytes) or an array; or None.
        layers: the editor's paint layers (RGBA arrays, or their files).
        uploaded_mask: a mask uploaded instead of painting (file, array or PIL image), or None.

    Returns:
        the message the page shows.

    Raises:
        UserError: no image, not an image, too large, nothing painted, everything painted, too
            many examples.
    """
    session.use()
    if image is None:
        raise UserError("Upload an example image first, then paint the object on it.")
    if len(session.examples) >= MAX_EXAMPLES:
        raise UserError(f"{MAX_EXAMPLES} examples at most: remove one before adding another.")
    what = f"The example image {upload_name(image, '')}".rstrip()
    picture = open_checked(image, what)
    if uploaded_mask is not None:  # the image's EXIF orientation applies to both (data.decode)
        what = f"The uploaded mask {upload_name(uploaded_mask, '')}".rstrip()
        rgb, mask = as_pair(picture, open_checked(uploaded_mask, what), what)
    else:
        rgb = as_rgb(picture, what)
        mask = painted_mask(layers, *rgb.shape[:2])
    if not mask.any():
        raise UserError("Nothing is painted on this example: paint the object with the brush "
                        "(or upload its mask), then add it.")
    if mask.all():
        raise UserError("The mask covers the whole image: paint only the object (the eraser "
                        "takes paint away), then add it.")
    n = len(session.examples) + 1
    with _writing(session):
        for name, pixels in ((f"{n}.png", rgb), (f"{n}_mask.png", mask * np.uint8(255))):
            target = session.path("examples", name)
            atomic.write_whole(target, lambda out, pixels=pixels:
                               Image.fromarray(pixels).save(out, format="PNG"))
    session.examples.append(Example(image=rgb, mask=mask))
    return f"Example {n} added ({100 * mask.mean():.1f}% of it is the object)."


def remove_example(session: Session, index: int) -> str:
    """Remove example `index` (0-based); returns the page's message."""
    session.use()
    if not 0 <= index < len(session.examples):
        raise UserError("Pick an example in the gallery first.")
    session.examples.pop(index)
    return f"Example {index + 1} removed; {len(session.examples)} left."


def safe_name(name: str) -> str:
    """A file name's stem, fit to name a file: its letters kept (any script), the characters
    file systems refuse replaced by _, at most MAX_NAME characters; "image" when nothing is left.
    """
    stem = os.path.splitext(os.path.basename(name))[0]
    stem = _UNSAFE.sub("_", stem).strip("._")[:MAX_NAME].strip("._")
    return stem or "image"


def _unique(name: str, taken: set) -> str:
    stem = safe_name(name)
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
    session.use()
    added, refused = 0, []
    taken = {name for name, _ in session.queries}
    for path in paths or ():
        label = upload_name(path, "an upload")
        try:
            image = read_image(str(path), label)
        except UserError as e:
            refused.append(str(e))
            continue
        name = _unique(label, taken)
        taken.add(name)
        session.queries.append((name, image))
        session.query_files[name] = name + _UNSAFE.sub("_", os.path.splitext(label)[1])
        added += 1
    if not added and refused:
        raise UserError("Not added: " + "; ".join(refused))
    message = f"{len(session.queries)} image(s) to segment"
    return message + (f"; not added: {'; '.join(refused)}" if refused else "") + "."


def _zip(files, target: str) -> str:
    """Write a zip of (path, name in the archive) pairs at `target` (a new file)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in files:
            archive.write(path, arcname)
    return target


def check_schedule(steps, learning_rate) -> tuple[int, float]:
    """The page's steps and learning rate as numbers, or the message saying what is wrong.

    Args:
        steps: the Steps field's value (a number, or whatever the browser sent).
        learning_rate: the Learning rate field's value.

    Returns:
        (steps, learning_rate).

    Raises:
        UserError: missing, not a number, NaN or infinite, a fraction of a step, out of range.
    """
    def number(value, name):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                not math.isfinite(value):
            raise UserError(f"{name} must be a number. Received: {value!r}")
        return value

    steps, learning_rate = number(steps, "Steps"), number(learning_rate, "The learning rate")
    if float(steps) != int(steps) or not 0 <= steps <= MAX_STEPS:
        raise UserError(f"Steps must be a whole number in 0..{MAX_STEPS}. Received: {steps}")
    if not 0 < learning_rate < 1:
        raise UserError(f"The learning rate must be in (0, 1). Received: {learning_rate}")
    return int(steps), float(learning_rate)


def check_formats(formats) -> tuple[str, ...]:
    """The page's mask formats, or the message saying what is wrong."""
    chosen = tuple(formats or ())
    unknown = [f for f in chosen if f not in outputs.FORMATS]
    if unknown or not chosen:
        raise UserError(f"Choose one or more mask formats of {', '.join(outputs.FORMATS)}."
                        + (f" Received: {', '.join(map(str, unknown))}" if unknown else ""))
    return chosen


def segment(session: Session, seg: Segmenter, *, steps, learning_rate, formats=("png",),
            on_progress: Callable[[float, str], None] | None = None) -> tuple[str, str]:
    """Adapt to the session's examples, segment its images, write masks and weights.

    Args:
        session: the browser session.
        seg: the server's segmenter (shared; held under its lock).
        steps: adaptation steps.
        learning_rate: adaptation learning rate.
        formats: what masks.zip holds, any of segmenter.outputs.FORMATS (as --mask_format).
        on_progress: (fraction done, description) callback; it may raise PressAbandoned (the
            server is stopping) to end the press, which then writes nothing.

    Returns:
        (masks.zip path, weights.zip path).

    Raises:
        UserError: no example, no image, bad steps / learning rate, or a failed write.
        DivergenceError: the adaptation diverged (nothing written).
        PressAbandoned: from on_progress (nothing written).
    """
    session.use()
    if not session.examples:
        raise UserError("Add at least one example (an image with the object painted) first.")
    if not session.queries:
        raise UserError("Add the images to segment first.")
    steps, learning_rate = check_schedule(steps, learning_rate)
    formats = check_formats(formats)
    report = on_progress or (lambda fraction, text: None)
    with seg.lock:
        seg.configure(steps=steps, learning_rate=learning_rate)
        report(0.0, f"Adapting to {len(session.examples)} example(s)")
        seg.fit([e.image for e in session.examples], [e.mask for e in session.examples],
                progress=lambda done, total: report(0.5 * done / total,
                                                    f"Adapting: step {done}/{total}"))
        masks = seg.predict([image for _, image in session.queries],
                            progress=lambda done, total: report(
                                0.5 + 0.45 * done / total, f"Segmenting: image {done}/{total}"))
        report(0.95, "Writing the masks and the adapted weights")
        with _writing(session):
            results = _write_press(session, seg, masks, formats)
    session.results = results
    session.runs += 1
    return os.path.join(session.folder, "masks.zip"), os.path.join(session.folder, "weights.zip")


def _write_press(session: Session, seg: Segmenter, masks, formats) -> list[Result]:
    """Write a press's results, weights and zips into a staging folder, then swap them in."""
    os.makedirs(session.folder, exist_ok=True)
    staging = atomic.temp_dir(session.folder, ".press")
    try:
        results, rels, written = [], [], []
        out = os.path.join(staging, "results")
        for (name, image), mask in zip(session.queries, masks):
            rels.append(session.query_files.get(name, name + ".png"))
            written += outputs.write_image(out, rels[-1], name, mask, formats,
                                           photo=image)["files"]
            results.append(Result(name=name, image=image, mask=mask,
                                  path=os.path.join(session.folder, "results", f"{name}_mask.png")))
        if "coco" in formats:
            written.append(os.path.basename(outputs.write_coco(out, rels, "object")))
        if "label_studio" in formats:
            written.append(os.path.basename(outputs.write_label_studio(out, rels, "object")))
        seg.save(os.path.join(staging, "weights"))
        # in the images' order; the records (.metaseg/) are bookkeeping, not a download
        _zip([(os.path.join(out, path), path) for path in written],
             os.path.join(staging, "masks.zip"))
        weights = os.path.join(staging, "weights")
        _zip([(os.path.join(root, f), os.path.relpath(os.path.join(root, f), staging))
              for root, _, files in sorted(os.walk(weights)) for f in sorted(files)],
             os.path.join(staging, "weights.zip"))
        previous = os.path.join(staging, "previous")
        os.makedirs(previous)
        for entry in ("results", "weights", "masks.zip", "weights.zip"):
            target = os.path.join(session.folder, entry)
            if os.path.lexists(target):
                os.replace(target, os.path.join(previous, entry))
            os.replace(os.path.join(staging, entry), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results


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
    session.use()
    if not 0 <= index < len(session.results):
        raise UserError("Pick a result in the gallery first.")
    result = session.results[index]
    layer = np.zeros(result.mask.shape + (4,), np.uint8)
    layer[result.mask > 0] = (255, 0, 0, 255)
    return result.image, layer
