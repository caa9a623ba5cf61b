"""Wall-clock time spent in named sections of the meta-learner, recorded where it is spent.

Library code marks its parts with `with section("inner_steps"): ...`; nothing is recorded
(a dictionary lookup per section) unless a caller opened `record()`, as the benchmarks do.
Sections nest: an outer section's time includes its inner sections' time, so callers pick
non-overlapping names to report.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

_active: list[dict[str, float]] = []


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to `name` in every open recording."""
    if not _active:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        for totals in _active:
            totals[name] += elapsed


@contextlib.contextmanager
def record() -> Iterator[dict[str, float]]:
    """Open a recording; yields name -> seconds, filled while the block runs."""
    totals: dict[str, float] = defaultdict(float)
    _active.append(totals)
    try:
        yield totals
    finally:
        _active.remove(totals)
