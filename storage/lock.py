"""One process per run folder: a `LOCK` file naming its holder (pid, host, start time).

Every mode that writes a run folder takes its lock after its inputs are checked and before its
first write (`hold`). A second process on the same folder is refused in one line naming the
holder. A lock whose holder is no longer running (killed with `kill -9`, a crashed machine's
reboot) is taken over with a message, so a killed run resumes by rerunning its command. A holder
on another host cannot be checked from here: the message names the file to delete once that
run is gone. `release_all` (run_metasegnet.py, at exit) removes this process's locks.

The lock file appears complete or not at all (written to a temporary name, then hard-linked
into place, which fails if a lock is there). `process_gone` also tells the checkpoint writer
which temporary folders belong to dead processes (storage/checkpoint.py).
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import time
import uuid

from absl import logging

from errors import UserError

LOCK_NAME = "LOCK"
_HOST = socket.gethostname()
_HELD: dict[str, str] = {}  # lock path -> this process's token in it


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # the command name (field 2) may hold spaces: the fields after its ')' are fixed
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_gone(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` of this host has exited (or its pid now names another process).

    Args:
        pid: a process id of this host.
        started: its `_process_start` when it was recorded, to tell a reused pid apart.

    Returns:
        True when no such process runs.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        pass
    return started is not None and _process_start(pid) not in (None, started)


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) \
        if isinstance(started, (int, float)) else "an unknown time"
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {when})"


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _create(path: str, token: str) -> bool:
    """Put this process's lock at `path`; False when a lock is already there."""
    tmp = f"{path}.tmp-{os.getpid()}-{token[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": _HOST, "started": time.time(),
                   "process_start": _process_start(os.getpid()), "token": token}, f)
    try:
        os.link(tmp, path)  # atomic, and fails when the name exists
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def hold(directory: str, flag: str) -> str:
    """Lock `directory` (created if missing) for this process, or refuse.

    Args:
        directory: the run folder.
        flag: the flag that chose it, for the messages (e.g. "--checkpoint").

    Returns:
        the lock file's path.

    Raises:
        UserError: another running process holds the folder.
    """
    path = os.path.join(directory, LOCK_NAME)
    if path in _HELD:
        return path
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {directory!r} cannot be created ({e.strerror}); choose a "
                        f"writable folder.") from e
    token = uuid.uuid4().hex
    for _ in range(5):  # a takeover raced by another process: look again
        try:
            if _create(path, token):
                _HELD[path] = token
                return path
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EOPNOTSUPP):
                raise UserError(f"{flag} {directory!r}: its file system allows no hard links, "
                                f"which the run-folder lock needs; use a local folder.") from e
            raise UserError(f"{flag} {directory!r} is not writable ({e.strerror}); choose a "
                            f"writable folder.") from e
        if os.path.islink(path):  # the tool writes a plain file: a link is someone else's
            raise UserError(f"{flag} {directory!r}: its lock {path} is a symbolic link (to "
                            f"{os.readlink(path)!r}), which this tool never writes; if no run "
                            f"uses the folder, delete the link {path}.")
        holder = _read(path)
        if holder is None:  # released meanwhile: try again
            continue
        if not holder:
            raise UserError(f"{flag} {directory!r} holds an unreadable lock {path}; if no run "
                            f"uses the folder, delete {path}.")
        if holder.get("host") != _HOST:
            raise UserError(f"{flag} {directory!r} is in use by {_describe(holder)}, which "
                            f"cannot be checked from {_HOST}: one process per run folder. If "
                            f"that run is gone, delete {path}.")
        if not (isinstance(holder.get("pid"), int)
                and process_gone(holder["pid"], holder.get("process_start"))):
            raise UserError(f"{flag} {directory!r} is in use by {_describe(holder)}: one "
                            f"process per run folder. Wait for that run to end or stop it, or "
                            f"choose another {flag}.")
        stale = f"{path}.stale-{os.getpid()}"
        try:
            os.rename(path, stale)  # only one process gets the dead holder's lock
        except FileNotFoundError:
            continue
        if _read(stale) != holder:  # another process took it over meanwhile: put theirs back
            try:
                os.link(stale, path)
            except FileExistsError:
                pass
            os.remove(stale)
            continue
        os.remove(stale)
        logging.info(f"Took over {path} from {_describe(holder)}, which is no longer running")
    raise UserError(f"{flag} {directory!r}: could not take its lock {path} (other processes "
                    f"keep replacing it); run one process per folder.")


def holder_of(directory: str) -> str | None:
    """Who holds `directory`'s lock, if a process still running does (e.g. a run in training).

    Args:
        directory: a run folder.

    Returns:
        "pid 4242 on gpu1 (started ...)", or None when no lock is held by a live process (a
        holder on another host counts as live: it cannot be checked from here).
    """
    holder = _read(os.path.join(directory, LOCK_NAME))
    if not holder or not isinstance(holder.get("pid"), int):
        return None
    if holder.get("host") == _HOST and process_gone(holder["pid"], holder.get("process_start")):
        return None
    return _describe(holder)


def release_all() -> None:
    """Remove the locks this process holds (those another process took over are left)."""
    for path, token in list(_HELD.items()):
        holder = _read(path)
        if holder and holder.get("token") == token:
            try:
                os.remove(path)
            except OSError:
                pass
        del _HELD[path]


atexit.register(release_all)
