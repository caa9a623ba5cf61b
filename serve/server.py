"""Start the page (`run_metasegnet.py --serve`), keep it bounded, stop it cleanly.

* Gradio writes only under the output folder (`keep_files_in`); sessions are private
  (`serve.privacy`); the files of sessions idle longer than --serve_keep_hours are removed, and a
  session's memory is freed when its browser leaves (`serve.retention`).
* `check_port` runs before the init is loaded, so a taken port costs no model load.
* SIGTERM and Ctrl-C stop the server: a Segment press in progress is abandoned at its next step
  (it has written nothing yet: a press writes at its end, into a staging folder swapped in
  whole), the server closes, and `launch` returns 0 (SIGTERM) or 130 (Ctrl-C).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading

from absl import logging

from errors import UserError
from segmenter.api import Segmenter

MAX_FILE_SIZE = "30mb"  # per upload; larger files are refused by the page
SWEEP_EVERY = 600.0  # seconds between two sweeps of idle sessions' files (at most)
PRESS_WAIT = 120.0  # seconds a stop waits for a press to reach its next step
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Refuse a port another process listens on, or an address this machine does not have.

    Args:
        host: the address to bind (--host).
        port: the port (--port).
        flag: the flag that chose the port, for the message.

    Raises:
        UserError: naming the address, the port and the fix.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r} is not an address of this machine ({e.strerror}); "
                        f"use 127.0.0.1, 0.0.0.0 or one of its addresses.") from e
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server itself binds: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"{flag} {port} on {host} is taken ({e.strerror}): another program "
                            f"(or another page) listens there. Stop it, or choose another "
                            f"{flag}.") from e


def keep_files_in(out_dir: str) -> str:
    """Make the output folder the process's only place to write: Gradio's upload cache and the
    temporary files of TensorFlow's autograph go into it (call before building the model).

    Args:
        out_dir: the server's output folder (created).

    Returns:
        its absolute path.
    """
    root = os.path.abspath(out_dir)
    for sub in (".uploads", ".tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, ".uploads")  # read when Gradio imports
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tempfile.tempdir = os.path.join(root, ".tmp")
    return root


class Stop:
    """SIGTERM and Ctrl-C set `event` (and remember which) instead of ending the process, so
    the main thread can abandon a press and close the server first."""

    def __init__(self):
        self.event = threading.Event()
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for number in EXIT_CODES:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        self.signal = self.signal or number
        self.event.set()

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def launch(seg: Segmenter, *, host: str, port: int, out_dir: str, keep_hours: float = 24.0,
           block: bool = True):
    """Serve the page for `seg` on host:port.

    Gradio's own upload cache goes to `<out_dir>/.uploads` (`keep_files_in`), so nothing is
    written outside `out_dir`; Gradio reads it when imported, hence the late import.

    Args:
        seg: the loaded init.
        host: address to bind (127.0.0.1 unless the user opens it up).
        port: port to bind.
        out_dir: the server's output folder (created).
        keep_hours: how long the files of an idle session are kept (--serve_keep_hours).
        block: serve until SIGTERM or Ctrl-C and return the exit status (0 or 130); False
            returns the running page at once, for tests.

    Returns:
        the exit status (block), or the launched Gradio Blocks.
    """
    root = keep_files_in(out_dir)
    from starlette.middleware import Middleware

    from serve.app import build_page
    from serve.privacy import Owners, PrivateSessions
    from serve.retention import Sessions

    sessions = Sessions(root, keep_hours)
    sessions.sweep()  # what earlier servers left, idle too long
    owners = Owners(os.path.join(root, ".uploads"))
    seg.warm_up()  # compiled before the first person presses Segment
    keep = keep_hours * 3600.0
    stop = Stop()
    page = build_page(seg, root, sessions=sessions, stopping=stop.event,
                      delete_cache=(max(1, int(min(keep / 4, SWEEP_EVERY))), max(1, int(keep))))
    page.queue(default_concurrency_limit=1)
    with stop if block else contextlib.nullcontext():
        page.launch(server_name=host, server_port=port, share=False, ssr_mode=False,
                    max_file_size=MAX_FILE_SIZE, show_error=False, inbrowser=False,
                    prevent_thread_lock=True,
                    app_kwargs={"middleware": [Middleware(PrivateSessions, owners=owners)]})
        if not block:
            page.metaseg_sessions = sessions
            return page
        while not stop.event.wait(min(keep / 4, SWEEP_EVERY)):
            sessions.sweep()
            owners.drop_missing_files()
        return _stop(seg, page, stop)


def _stop(seg: Segmenter, page, stop: Stop) -> int:
    """Abandon the press in progress, close the server; the exit status of the signal."""
    name = signal.Signals(stop.signal).name if stop.signal else "a stop"
    logging.info(f"Stopping the page ({name}): a Segment press in progress is abandoned and "
                 f"writes nothing")
    if seg.lock.acquire(timeout=PRESS_WAIT):  # the press ends at its next step
        seg.lock.release()
    else:
        logging.warning(f"A press did not stop within {PRESS_WAIT:.0f} s; stopping anyway (it "
                        f"had written nothing)")
    page.close()
    return EXIT_CODES.get(stop.signal, 0)
