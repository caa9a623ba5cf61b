"""Segment a folder tree of any size with a segmenter's current weights: images are read on a
thread while the model segments the previous batch, each image's files are written as soon as
it is done (segmenter.outputs), and a rerun resumes where a killed run stopped.

The masks folder holds `.metaseg/state.json`: the key of the weights that segment it (the init,
the examples and the settings, `segmenter.keys`) and what the key is made of. A rerun with the
same key skips every image whose files are all there and leaves them untouched; another key is
refused with the reason, unless asked to restart, which removes the files metaseg wrote (and
that nobody has changed since). A file in the way that metaseg did not write is never deleted or
overwritten: it is named, and the run refused before any work. An image that cannot be read, or
is too large, is named in the summary and on the screen, and skipped.
"""
from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from absl import logging
import numpy as np
from PIL import Image

from errors import UserError
from segmenter import outputs
from segmenter.images import probability_at_size, read_pair, read_rgb, resize_image
from storage import atomic

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 50_000_000  # larger photos are skipped and named, not shrunk or read into memory
STATE_FORMAT = "metaseg-masks"
SUMMARY_FORMAT = "metaseg-fine-tune-task"  # marks a summary.json as one this tool wrote
PREFETCH_BATCHES = 2  # decoded batches waiting for the model: memory does not grow with the tree
PENDING = "pending.json"  # the files of the batch being written, named before they are
_DONE = object()


def natural_key(name: str):
    """Sort key that puts "img2" before "img10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Source:
    """An image of the tree: its path, its path relative to the tree, its output stem."""

    path: str
    rel: str
    stem: str


def list_images(tree: str, *, exclude: tuple[str, ...] = ()) -> tuple[list[Source], list[str]]:
    """Every image file under `tree` (any depth, any case of extension; hidden files and
    folders, and the `exclude` folders, left out), in natural order.

    Two images of a folder that share a stem (`a.jpg`, `a.png`) get stems that keep their
    extensions (`a_jpg`, `a_png`), so no two images share an output; names keep their letters.

    Args:
        tree: the folder.
        exclude: folders not to look into (the masks folder, when it is inside the tree).

    Returns:
        (the images, one line per stem shared in a folder).

    Raises:
        UserError: the tree is not a folder.
    """
    if not os.path.isdir(tree):
        raise UserError(f"The images folder {tree!r} is not a folder.")
    skip = {os.path.realpath(e) for e in exclude}
    found, shared = [], []
    for folder, dirs, files in os.walk(tree):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".") and
                          os.path.realpath(os.path.join(folder, d)) not in skip), key=natural_key)
        names = sorted((f for f in files if not f.startswith(".") and
                        os.path.splitext(f)[1].lower() in IMAGE_EXTS), key=natural_key)
        stems: dict[str, list[str]] = {}
        for name in names:
            stems.setdefault(os.path.splitext(name)[0], []).append(name)
        rel_folder = os.path.relpath(folder, tree)
        rel_folder = "" if rel_folder == "." else rel_folder
        for stem, group in stems.items():
            if len(group) > 1:
                shared.append(f"{os.path.join(rel_folder, stem)}: {', '.join(group)} share a "
                              f"stem; their outputs are named {', '.join(_stem(n) for n in group)}")
            for name in group:
                found.append(Source(path=os.path.join(folder, name),
                                    rel=os.path.join(rel_folder, name),
                                    stem=stem if len(group) == 1 else _stem(name)))
    return found, shared


def _stem(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem}_{ext.lstrip('.').lower()}"


# ---------------------------------------------------------------------------- the state
def read_state(out: str) -> dict | None:
    """The masks folder's state (None when it has none)."""
    try:
        with open(os.path.join(out, outputs.STATE_DIR, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("format") == STATE_FORMAT else None


def _ours(out: str, sources: list[Source]) -> dict[str, str | None]:
    """The files of `out` metaseg wrote: relative path -> the sha256 it wrote (None: a file of
    the batch a killed run was writing, or of an older version's predictions folder, whose
    summary.json lists its queries)."""
    ours = {}
    for source in sources:
        record = outputs.read_record(out, source.rel)
        if record is not None:
            ours.update(record.get("files", {}))
    try:  # the batch a killed run was writing when it died
        with open(os.path.join(out, outputs.STATE_DIR, PENDING), encoding="utf-8") as f:
            for path in json.load(f).get("files", []):
                ours.setdefault(path, None)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(os.path.join(out, outputs.SUMMARY_FILE), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = {}
    if isinstance(summary, dict) and summary.get("format") == SUMMARY_FORMAT and \
            "queries" in summary and outputs.STATE_DIR not in os.listdir(out):
        for entry in summary["queries"]:  # written by a version before the resumable one
            stem = os.path.splitext(str(entry.get("query", "")))[0]
            for suffix in ("_mask.png", "_overlay.png"):
                ours.setdefault(stem + suffix, None)
    return ours


def _restart(out: str, sources: list[Source]) -> list[str]:
    """Remove what metaseg wrote and nobody changed since; returns the files kept (changed)."""
    kept = []
    for path, digest in _ours(out, sources).items():
        full = os.path.join(out, path)
        if not os.path.exists(full):
            continue
        if digest is not None and outputs.file_digest(full) != digest:
            kept.append(path)
            continue
        os.remove(full)
    for source in sources:
        record = outputs.record_path(out, source.rel)
        if os.path.exists(record):
            os.remove(record)
    return kept


def _check_state(out: str, key: str, parts: dict, sources: list[Source], restart: bool,
                 flag: str) -> None:
    state = read_state(out)
    if state is None or state.get("key") == key:
        return
    if restart:
        kept = _restart(out, sources)
        if kept:
            logging.warning(f"kept {len(kept)} file(s) changed since metaseg wrote them, e.g. "
                            f"{kept[0]}")
        return
    differ = [name for name in ("init", "examples", "settings")
              if state.get("parts", {}).get(name) != parts.get(name)] or ["weights"]
    raise UserError(f"{flag} {out!r} holds masks of other {' and '.join(differ)} than this "
                    f"run's; pass --restart to replace what metaseg wrote there (files it did "
                    f"not write are kept), or choose another {flag}.")


# ------------------------------------------------------------------------------- the work
def _read(source: Source, size: int, keep_photo: bool, truth_dir: str | None):
    """One image read for the model: (resized, (H, W), photo or None, truth or None), or the
    reason it is skipped."""
    try:
        with Image.open(source.path) as probe:
            width, height = probe.size
        if width * height > MAX_PIXELS:
            return (f"{width}x{height} pixels, over the limit of {MAX_PIXELS // 1_000_000} "
                    f"megapixels")
        truth = None
        truth_path = os.path.join(truth_dir, os.path.splitext(source.rel)[0] + ".png") \
            if truth_dir else None
        if truth_path and os.path.isfile(truth_path):
            photo, truth = read_pair(source.path, truth_path)
        else:
            photo = read_rgb(source.path)
    except (UserError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return (resize_image(photo, size), photo.shape[:2], photo if keep_photo else None, truth)


def _reader(sources: list[Source], size: int, batch_size: int, keep_photo: bool,
            truth_dir: str | None, batches: queue.Queue, stop: threading.Event) -> None:
    try:
        for start in range(0, len(sources), batch_size):
            batch = [(s, _read(s, size, keep_photo, truth_dir))
                     for s in sources[start:start + batch_size]]
            while not stop.is_set():
                try:
                    batches.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        batches.put(_DONE)
    except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
        batches.put(e)


def check_masks_folder(tree: str, out: str, *, formats, key: str | None, parts: dict,
                       restart: bool = False, flag: str = "masks folder"
                       ) -> tuple[list[Source], list[str]]:
    """What segmenting `tree` into `out` needs checked before any work (and, with restart, the
    files of another key removed): run it before a fit, so a refusal costs nothing.

    Args:
        tree: the images' folder.
        out: the masks folder.
        formats: the formats asked for.
        key: the weights' key; parts: what it is made of (init, examples, settings). None
            when the weights are not known yet (before meta-training or UHO): the masks of
            another key are then left to the check made once they are.
        restart: replace the masks of another key (files metaseg did not write are kept).
        flag: how to name `out` in messages.

    Returns:
        (the images, one line per stem shared in a folder).

    Raises:
        UserError: no images, an unknown format, another key's masks, or a file in the way
            that metaseg did not write.
    """
    unknown = sorted(set(formats) - set(outputs.FORMATS))
    if unknown or not formats:
        raise UserError(f"--mask_format takes {', '.join(outputs.FORMATS)}. Received: "
                        f"{list(formats)}")
    sources, shared = list_images(tree, exclude=(out,))
    if not sources:
        raise UserError(f"No images in {tree!r} (its folders included): expected "
                        f"{', '.join(IMAGE_EXTS)} files.")
    if os.path.isdir(out) and key is not None:
        _check_state(out, key, parts, sources, restart, flag)
    if os.path.isdir(out):
        ours = _ours(out, sources)
        in_the_way = [path for s in sources
                      for path in outputs.per_image_paths(s.rel, s.stem, formats).values()
                      if path not in ours and os.path.lexists(os.path.join(out, path))]
        if in_the_way:
            raise UserError(f"{os.path.join(out, in_the_way[0])} is in the way and metaseg did "
                            f"not write it ({len(in_the_way)} such file(s)); move them, or "
                            f"choose another {flag}. Nothing was written.")
    return sources, shared


def predict_tree(predict: Callable[[np.ndarray], np.ndarray], size: int, tree: str, out: str, *,
                 formats, key: str, parts: dict, restart: bool = False, batch_size: int = 8,
                 truth_dir: str | None = None, flag: str = "masks folder",
                 on_image: Callable[[int, int, int], None] | None = None) -> dict:
    """Segment every image of `tree` into `out` (see the module docstring).

    Args:
        predict: (N, S, S, 3) uint8 images -> (N, S, S) foreground probabilities.
        size: S, the model's side.
        tree: the images' folder.
        out: the masks folder (created if new).
        formats: segmenter.outputs.FORMATS to write ("coco" and "label_studio" are written at
            the end, from every image's record).
        key: the weights' key; parts: what it is made of (init, examples, settings).
        restart: replace the masks of another key (files metaseg did not write are kept).
        batch_size: images per model call.
        truth_dir: a tree of `<stem>.png` ground-truth masks mirroring `tree` (optional): the
            images that have one are scored (IoU).
        flag: how to name `out` in messages.
        on_image: (done, total, skipped) after each image.

    Returns:
        {"images", "done_before", "segmented", "skipped": [(rel, reason)], "shared_stems",
         "rels": every image's path in the tree, "seconds", "images_per_s", "input_wait_share",
         "ious": {rel: IoU}}.

    Raises:
        UserError: as check_masks_folder, before anything is written.
    """
    sources, shared = check_masks_folder(tree, out, formats=formats, key=key, parts=parts,
                                         restart=restart, flag=flag)
    os.makedirs(os.path.join(out, outputs.STATE_DIR), exist_ok=True)
    for folder, _, _ in os.walk(out):  # a killed run's half-written files
        atomic.remove_leftovers(folder)
    atomic.write_json(os.path.join(out, outputs.STATE_DIR, "state.json"),
                      {"format": STATE_FORMAT, "key": key, "parts": parts,
                       "formats": list(formats)}, indent=1)
    todo = [s for s in sources if not _complete(out, s, formats)]
    done_before = len(sources) - len(todo)
    if done_before:
        logging.info(f"resuming: {done_before} of {len(sources)} done")
    stats = _stream(predict, size, out, todo, formats, batch_size, truth_dir,
                    lambda done, skipped: on_image and on_image(done_before + done,
                                                                len(sources), skipped))
    rels = [s.rel for s in sources]
    if "coco" in formats:
        outputs.write_coco(out, rels, parts.get("category") or "object")
    if "label_studio" in formats:
        outputs.write_label_studio(out, rels, parts.get("category") or "object")
    return {"images": len(sources), "done_before": done_before, "shared_stems": shared,
            "rels": rels, **stats}


def _complete(out: str, source: Source, formats) -> bool:
    record = outputs.read_record(out, source.rel)
    return record is not None and all(
        path in record.get("files", {}) and os.path.exists(os.path.join(out, path))
        for path in outputs.per_image_paths(source.rel, source.stem, formats).values())


def _stream(predict, size, out, todo, formats, batch_size, truth_dir, on_image) -> dict:
    """Read on a thread, segment and write here; the time spent waiting for the reader."""
    batches: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, name="metaseg-reader", daemon=True,
                              args=(todo, size, batch_size, "overlay" in formats, truth_dir,
                                    batches, stop))
    started, waited, segmented, skipped, ious = time.monotonic(), 0.0, 0, [], {}
    reader.start()
    try:
        while True:
            t = time.monotonic()
            batch = batches.get()
            waited += time.monotonic() - t
            if batch is _DONE:
                break
            if isinstance(batch, BaseException):
                raise batch
            good = [(s, item) for s, item in batch if not isinstance(item, str)]
            for s, reason in ((s, item) for s, item in batch if isinstance(item, str)):
                logging.warning(f"skipped {s.path}: {reason}")
                skipped.append((s.rel, reason))
            probabilities = predict(np.stack([item[0] for _, item in good])) if good else []
            atomic.write_json(os.path.join(out, outputs.STATE_DIR, PENDING), {"files": [
                path for s, _ in good
                for path in outputs.per_image_paths(s.rel, s.stem, formats).values()]})
            for (source, (_, (height, width), photo, truth)), p in zip(good, probabilities):
                mask = probability_at_size(p, height, width) >= 0.5
                extra = {}
                if truth is not None:
                    union = np.logical_or(mask, truth).sum()
                    extra["iou"] = float(np.logical_and(mask, truth).sum() / union) if union \
                        else 1.0
                    ious[source.rel] = extra["iou"]
                outputs.write_image(out, source.rel, source.stem, mask, formats, photo=photo,
                                    extra=extra)
                segmented += 1
                on_image(segmented + len(skipped), len(skipped))
            for _ in range(len(batch) - len(good)):
                on_image(segmented + len(skipped), len(skipped))
    finally:
        stop.set()
        reader.join(timeout=5)
    seconds = time.monotonic() - started
    return {"segmented": segmented, "skipped": skipped, "seconds": seconds,
            "images_per_s": segmented / seconds if seconds > 0 else 0.0,
            "input_wait_share": waited / seconds if seconds > 0 else 0.0, "ious": ious}
