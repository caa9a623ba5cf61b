"""How long the page keeps what: the sessions this server holds, their memory freed when their
browser leaves, and the files of sessions idle longer than --serve_keep_hours removed.

A session's last use is the newer of its last button press (while this server holds it) and its
folder's newest file. `sweep` removes the folders idle longer than the limit (left by this
server or an earlier one) and Gradio's cached copies as old, and ends the sessions they belonged
to, so their memory is freed too; the page runs it every few minutes.
"""
from __future__ import annotations

import os
import shutil
import threading
import time

from absl import logging

from serve.session import Session, end_session

HIDDEN = (".uploads", ".tmp")  # Gradio's cache and the temporary files: not sessions


def newest_change(folder: str) -> float:
    """The newest modification time of a folder and everything in it (0 when it is gone)."""
    newest = 0.0
    for root, dirs, files in os.walk(folder):
        for name in [root] + [os.path.join(root, f) for f in files]:
            try:
                newest = max(newest, os.lstat(name).st_mtime)
            except OSError:
                continue
    return newest


def held_bytes(session: Session) -> int:
    """The bytes of the images and masks a session holds in memory."""
    arrays = [a for e in session.examples for a in (e.image, e.mask)]
    arrays += [image for _, image in session.queries]
    arrays += [a for r in session.results for a in (r.image, r.mask)]
    return sum(a.nbytes for a in {id(a): a for a in arrays}.values())  # results share images


class Sessions:
    """The sessions of this server, by the page's session hash.

    Args:
        root: the server's output folder (--serve_dir).
        keep_hours: how long an idle session's files are kept.
    """

    def __init__(self, root: str, keep_hours: float):
        self.root = os.path.abspath(root)
        self.keep_seconds = keep_hours * 3600.0
        self._lock = threading.Lock()
        self._by_hash: dict[str, Session] = {}

    def get(self, session_hash: str) -> Session | None:
        """The live session of a session hash, if this server holds one."""
        with self._lock:
            return self._by_hash.get(session_hash)

    def add(self, session_hash: str, session: Session) -> Session:
        """Hold a new session under its hash; returns it."""
        with self._lock:
            self._by_hash[session_hash] = session
        return session

    def end(self, session_hash: str) -> Session | None:
        """End a session (its browser left): its memory is freed now, its files kept until the
        sweep. Returns it, or None when this server holds none by that hash."""
        with self._lock:
            session = self._by_hash.pop(session_hash, None)
        if session is not None:
            held = held_bytes(session)
            end_session(session)
            logging.info(f"A browser left: its session's examples, images and results "
                         f"({held / 1e6:.1f} MB) are freed; its files go after "
                         f"{self.keep_seconds / 3600:g} h")
        return session

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove the folders of sessions idle longer than the limit, and Gradio's cached files
        as old; end the live sessions among them.

        Args:
            now: the time to measure idleness from (default: now).

        Returns:
            the session folders removed.
        """
        now = time.time() if now is None else now
        limit = now - self.keep_seconds
        with self._lock:
            live = {s.session_id: (h, s) for h, s in self._by_hash.items()}
        removed = []
        for entry in sorted(os.listdir(self.root)) if os.path.isdir(self.root) else ():
            folder = os.path.join(self.root, entry)
            if entry in HIDDEN or not os.path.isdir(folder) or os.path.islink(folder):
                continue
            session_hash, session = live.get(entry, (None, None))
            last = max(newest_change(folder), session.last_used if session else 0.0)
            if last >= limit:
                continue
            if session is not None:
                with self._lock:
                    self._by_hash.pop(session_hash, None)
                end_session(session)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        with self._lock:  # sessions that never wrote a file: their memory only
            idle = [h for h, s in self._by_hash.items() if s.last_used < limit]
        for session_hash in idle:
            self.end(session_hash)
        self._sweep_cache(limit)
        if removed:
            logging.info(f"Removed {len(removed)} session folder(s) idle for more than "
                         f"{self.keep_seconds / 3600:g} h from {self.root}")
        return removed

    def _sweep_cache(self, limit: float) -> None:
        """Gradio's cached copies (one folder per file) older than the limit."""
        cache = os.path.join(self.root, ".uploads")
        for entry in os.listdir(cache) if os.path.isdir(cache) else ():
            folder = os.path.join(cache, entry)
            if os.path.isdir(folder) and not os.path.islink(folder) and \
                    newest_change(folder) < limit:
                shutil.rmtree(folder, ignore_errors=True)
