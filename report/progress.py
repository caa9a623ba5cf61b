"""A small progress bar with ETA on stderr (no dependency).

On a terminal it redraws one line; otherwise (logs, CI) it prints a line at most every
`min_interval_s` seconds and at the end, so log files stay short.
"""
from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    """`1h02m03s` / `2m03s` / `3s`.

    Args:
        seconds: a duration.

    Returns:
        the compact string.
    """
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """`desc  37/100 [=====>    ] 37% 12s<20s loss=0.51`.

    Args:
        total: number of units.
        desc: label.
        initial: units already done (a resumed run).
        stream: where to write (default stderr).
        min_interval_s: throttle for non-terminal output.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, stream=None,
                 min_interval_s: float = 10.0):
        self.total, self.desc, self.done = max(int(total), 0), desc, int(initial)
        self._initial = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        self._start = time.monotonic()
        self._last_print = -1e9
        self._min_interval = min_interval_s
        self._info = ""

    def update(self, n: int = 1, **info) -> None:
        """Advance by n units; info is shown as key=value after the bar."""
        self.done += n
        if info:
            self._info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in info.items())
        now = time.monotonic()
        if self._tty or now - self._last_print >= self._min_interval or self.done >= self.total:
            self._last_print = now
            self._write(now)

    def _write(self, now: float) -> None:
        elapsed = now - self._start
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        frac = self.done / self.total if self.total else 1.0
        width = 24
        filled = int(width * min(frac, 1.0))
        bar = "=" * filled + (">" if filled < width else "") + " " * max(width - filled - 1, 0)
        eta_text = format_seconds(eta) if eta == eta else "?"
        line = (f"{self.desc} {self.done}/{self.total} [{bar}] {100 * frac:3.0f}% "
                f"{format_seconds(elapsed)}<{eta_text} {self._info}")
        self.stream.write(("\r" + line + "\033[K") if self._tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line (terminal) so later output starts on a fresh line."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
