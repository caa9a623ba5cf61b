"""A session is private: each browser holds a random key, and the page serves a session and its
files to the browser that opened it, and to no one else.

Gradio names a browser session by a hash the browser chooses, and serves any file of its cache
to whoever asks for its path. In front of Gradio's routes (`PrivateSessions`, ASGI middleware):

* every browser gets a key, a random 256-bit cookie (HttpOnly, SameSite=Strict), on its first
  request;
* a session hash is bound to the key of the first request that names it (in the path, the query
  or a JSON body); a request naming it with another key, or none, is refused (403), so another
  browser can neither join the session's events, nor read its event stream, nor press its
  buttons;
* a file is served only to the keys it was sent to: the paths in a response to a key (an
  upload's answer, an event's outputs) are recorded for that key, and a request for any other
  file is refused (403). Files under `--serve_dir` outside Gradio's cache are never served: the
  page shows copies Gradio makes in its cache.

The handlers check the key as well (`key_of`, `Session.owner`), so a session's state is used
only by the browser that made it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

COOKIE = "metaseg_browser"
_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
_FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/file[=/](.*)$", re.S)
_HEARTBEAT = re.compile(r"^(?:/gradio_api)?/heartbeat/([^/]+)$")
_MAX_JSON_BODY = 8 << 20  # a JSON request body read to find its session hash
_REFUSED = b"This belongs to another browser session."


def key_of(request) -> str:
    """The browser key of a Gradio request ("" without one: outside the page, in tests)."""
    cookies = getattr(request, "cookies", None) or {}
    key = cookies.get(COOKIE, "")
    return key if _KEY.match(key or "") else ""


class Owners:
    """Which browser key owns which session hash, and which keys were sent which files.

    Args:
        cache_dir: Gradio's cache folder (the only folder whose files are served).
    """

    def __init__(self, cache_dir: str):
        self.cache_dir = os.path.realpath(cache_dir)
        self._lock = threading.Lock()
        self._sessions: dict[str, str] = {}
        self._files: dict[str, set[str]] = {}

    def bind(self, session_hash: str, key: str) -> bool:
        """Bind a session hash to a key (the first one to name it); False for another key."""
        with self._lock:
            return self._sessions.setdefault(session_hash, key) == key

    def forget(self, session_hash: str) -> None:
        """Drop a session hash (its session ended); its later use by anyone is a new session
        bound anew, which holds nothing."""
        with self._lock:
            self._sessions.pop(session_hash, None)

    def sent(self, key: str, path: str) -> None:
        """Record that `path` (a file in the cache) was sent to `key`."""
        real = os.path.realpath(path)
        if real.startswith(self.cache_dir + os.sep):
            with self._lock:
                self._files.setdefault(real, set()).add(key)

    def may_read(self, key: str, path: str) -> bool:
        """Whether the file at `path` was sent to `key`."""
        with self._lock:
            return key in self._files.get(os.path.realpath(path), ())

    def drop_missing_files(self) -> None:
        """Forget files no longer in the cache (removed by the idle-files sweep)."""
        with self._lock:
            for path in [p for p in self._files if not os.path.exists(p)]:
                del self._files[path]


def _paths_in(value, out: list) -> list:
    """Every file path in a JSON value: FileData dicts' "path", and bare strings of a list (the
    upload route's answer)."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            out.append(value["path"])
        for item in value.values():
            _paths_in(item, out)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str) and item.startswith(os.sep):
                out.append(item)
            else:
                _paths_in(item, out)
    return out


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class PrivateSessions:
    """ASGI middleware: browser keys, session hashes bound to them, files served to their keys.

    Args:
        app: the Gradio app.
        owners: the bindings (shared with the page's handlers).
    """

    def __init__(self, app, owners: Owners):
        self.app = app
        self.owners = owners

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cookie = SimpleCookie()
        try:
            cookie.load(_header(scope, b"cookie"))
        except Exception:  # noqa: BLE001 (a malformed cookie header: a browser without a key)
            cookie = SimpleCookie()
        key = cookie[COOKIE].value if COOKIE in cookie else ""
        new_key = not _KEY.match(key)
        if new_key:  # the handlers of this very request see the new key too
            key = secrets.token_urlsafe(32)
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"]
                                         if k.lower() != b"cookie"] +
                     [(b"cookie", f"{COOKIE}={key}".encode())])
        path = scope.get("path", "")
        match = _FILE_ROUTE.match(path)
        if match and not self.owners.may_read(key, match.group(1)):
            return await _refuse(send, new_key and key)
        hashes = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(
            "session_hash", [])
        beat = _HEARTBEAT.match(path)
        hashes += [beat.group(1)] if beat else []
        if scope.get("method") == "POST" and \
                _header(scope, b"content-type").startswith("application/json"):
            body, receive = await _read_body(receive)
            try:
                found = json.loads(body or b"{}")
            except ValueError:
                found = None
            if isinstance(found, dict) and isinstance(found.get("session_hash"), str):
                hashes.append(found["session_hash"])
        if not all(self.owners.bind(h, key) for h in hashes):
            return await _refuse(send, new_key and key)
        return await self.app(scope, receive, self._recording(send, key, new_key))

    def _recording(self, send, key: str, new_key: bool):
        """`send`, setting the key's cookie and recording the files the response names."""
        state = {"kind": None, "buffer": b""}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                kind = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
                state["kind"] = "events" if kind.startswith(b"text/event-stream") else \
                    "json" if kind.startswith(b"application/json") else None
                if new_key:
                    headers.append((b"set-cookie", _cookie(key)))
                message = dict(message, headers=headers)
            elif message["type"] == "http.response.body" and state["kind"]:
                self._record(state, message.get("body", b""),
                             done=not message.get("more_body", False), key=key)
            await send(message)

        return recording_send

    def _record(self, state, chunk: bytes, *, done: bool, key: str) -> None:
        state["buffer"] += chunk
        if state["kind"] == "events":  # whole events end in a blank line
            *events, state["buffer"] = state["buffer"].split(b"\n\n")
            texts = [line[5:] for event in events for line in event.split(b"\n")
                     if line.startswith(b"data:")]
        elif done or len(state["buffer"]) > _MAX_JSON_BODY:
            texts, state["buffer"] = [state["buffer"]], b""
        else:
            return
        for text in texts:
            try:
                value = json.loads(text)
            except ValueError:
                continue
            for found in _paths_in(value, []):  # only paths in the cache are recorded
                self.owners.sent(key, found)


def _cookie(key: str) -> bytes:
    return f"{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict".encode()


async def _read_body(receive):
    """The whole request body, and a `receive` that hands it to the app again."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), receive
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
        if sum(map(len, chunks)) > _MAX_JSON_BODY:
            break
    body = b"".join(chunks)
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return body, replay


async def _refuse(send, new_key) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(_REFUSED)).encode())]
    if new_key:
        headers.append((b"set-cookie", _cookie(new_key)))
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": _REFUSED})
