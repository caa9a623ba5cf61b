"""Writes a crash never leaves half done: each goes to a temporary sibling, then os.replace.

Temporary names carry the writer's pid (`<name>.tmp-<pid>...`), so `remove_leftovers` can tell
the leftovers of a process that died mid-write from a live process's work in progress.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Callable

from errors import UserError
from storage.lock import process_gone

_LEFTOVER = re.compile(r"\.tmp-(\d+)(?:[-.]|$)")


@contextmanager
def naming(path: str):
    """Make every OSError raised inside name `path` (a full disk's write errors carry no file
    name), so the entry point can say which file and which flag's folder failed."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from e
        raise


@contextmanager
def replacing(path: str, suffix: str = ""):
    """Yield a temporary sibling of `path` to write; once the block ends, it replaces `path`.
    On any error it is removed (a full disk leaves nothing behind) and `path` is as it was.

    Args:
        path: the file to write.
        suffix: the temporary name's ending (savefig reads the format from it).
    """
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        with naming(path):
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> str:
    """Write `text` to `path` atomically (flushed to disk before the rename).

    Args:
        path: the file to write.
        text: its whole content.

    Returns:
        path.
    """
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically: a reader (or a rerun after a kill) sees the whole file
    or none of it.

    Args:
        path: the file to write.
        data: its whole content.

    Returns:
        path.
    """
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_chunks(path: str, chunks) -> str:
    """Write text chunks to `path` as one file, atomically, holding one chunk at a time in
    memory (a file as long as a folder of any size).

    Args:
        path: the file to write.
        chunks: an iterable of str.

    Returns:
        path.
    """
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_json(path: str, value, **dumps_kwargs) -> str:
    """Write `value` as JSON to `path` atomically; `dumps_kwargs` go to json.dumps (indent...)."""
    return write_text(path, json.dumps(value, **dumps_kwargs))


def save_figure(fig, path: str, **savefig_kwargs) -> str:
    """Save a matplotlib figure to a PNG `path` atomically (its folder is created).

    Args:
        fig: the figure.
        path: the .png to write.
        **savefig_kwargs: dpi, bbox_inches, ...

    Returns:
        path.
    """
    with naming(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path, ".png") as tmp:  # the suffix tells savefig the format
        fig.savefig(tmp, **savefig_kwargs)
    return path


def folder_mode() -> int:
    """The mode os.mkdir gives a new folder under the current umask (0o777 & ~umask)."""
    umask = os.umask(0o22)
    os.umask(umask)
    return 0o777 & ~umask


def temp_dir(parent: str, prefix: str) -> str:
    """A new temporary folder in `parent`, named `<prefix>.tmp-<pid>-<random>`, with the mode a
    mkdir would give it (tempfile.mkdtemp makes 0700; renamed into place, it is the output)."""
    path = tempfile.mkdtemp(prefix=f"{prefix}.tmp-{os.getpid()}-", dir=parent)
    os.chmod(path, folder_mode())
    return path


def remove_leftovers(directory: str) -> list[str]:
    """Delete the temporary files and folders of writers that died in `directory`.

    Only names carrying the pid of a process that no longer runs are removed: a live process's
    write in progress, and anything without a pid, are left alone.

    Args:
        directory: a folder written with these functions.

    Returns:
        the removed paths.
    """
    removed = []
    for entry in os.listdir(directory):
        match = _LEFTOVER.search(entry)
        if match is None or not process_gone(int(match.group(1))):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        removed.append(path)
    return removed


def check_writable(path: str, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be written.

    Creates nothing: a temporary file is made and removed in the folder or, when it does not
    exist yet, in its nearest existing parent (where it would be created).

    Args:
        path: the output folder.
        flag: the flag that chose it, for the message.

    Raises:
        UserError: one line naming the flag, the folder and why.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a file; pass a folder.")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag} {path!r} cannot be created: {probe!r} is a file.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".write-check.tmp-{os.getpid()}-", dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise UserError(f"{flag} {path!r} cannot be written ({e.strerror} in {probe!r}); make "
                        f"it writable or choose another {flag}.") from e


def write_whole(target: str, write: Callable[[str], object]) -> str:
    """Write a file or folder through `write(path)` in a hidden sibling, then swap it in whole,
    so an interrupted write never leaves half an output where a whole one was.

    Args:
        target: the file or folder to write (an existing one is replaced).
        write: writes the output at the path it is given (a folder it must create itself).

    Returns:
        target.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = temp_dir(parent, f".{os.path.basename(target)}")
    try:
        staged = os.path.join(staging, os.path.basename(target))
        write(staged)
        if os.path.isdir(target):
            os.replace(target, os.path.join(staging, "previous"))
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
