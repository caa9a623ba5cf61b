"""Keep TensorFlow's C++ log lines off the screen of metaseg's entry points.

What prints them (TensorFlow 2.21, CPU build), and what stops each:
* `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR` and
  `I0000 ... port.cc] oneDNN custom operations are on ...`: written while `import tensorflow`
  loads its shared libraries (once per library that bundles the logger, so twice), before
  TensorFlow reads TF_CPP_MIN_LOG_LEVEL; no level hides them. TF_ENABLE_ONEDNN_OPTS=0 would, by
  switching the oneDNN kernels off, which changes the numbers and the speed, so it is not used:
  `quiet_tensorflow` imports TensorFlow with file descriptor 2 sent to a temporary file and
  passes on every line the level in force does not hide.
* `I0000 ... cpu_feature_guard.cc] This TensorFlow binary is optimized ...`: level >= 1.
* `E0000 ... util.cc] oneDNN supports DT_INT32 only on platforms with AVX-512. Falling back to
  the default Eigen-based implementation ...`: logged when the first inner-loop step is traced,
  at ERROR severity, so only level 3 hides it. Level 3 hides every C++ ERROR line as well;
  failures still reach the screen as Python exceptions, and --verbose shows everything.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "3"
# absl's notice that lines logged before its initialization go to stderr: it only announces them.
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
# absl's line prefix: severity letter, MMDD, time, thread id, file:line]
_LOG_LINE = re.compile(r"^([IWE])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2}  # FATAL lines are never hidden


def _hidden(line: str, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL = level hides this line of TensorFlow's C++ logger."""
    if line.startswith(_ABSL_NOTICE):
        return level >= 1
    match = _LOG_LINE.match(line)
    return bool(match) and _SEVERITY[match.group(1)] < level


def quiet_tensorflow(verbose: bool = False) -> None:
    """Set TensorFlow's C++ log level and import TensorFlow without its start-up lines.

    Call it first thing in an entry point, before anything imports TensorFlow. The level is 3
    unless TF_CPP_MIN_LOG_LEVEL is already set (the user's choice stands; the start-up lines
    are then filtered by that level, as TensorFlow does for every later line).

    Args:
        verbose: leave everything as TensorFlow does it (every C++ line shown at its default
            level 0, unless TF_CPP_MIN_LOG_LEVEL says otherwise).
    """
    if verbose:
        return
    level = os.environ.setdefault(LEVEL_VARIABLE, QUIET_LEVEL)
    if "tensorflow" in sys.modules or not level.strip().isdigit() or int(level) < 1:
        import tensorflow  # noqa: F401, PLC0415
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to redirect
        import tensorflow  # noqa: F401, PLC0415
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401, PLC0415
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _hidden(line, int(level)))
            sys.stderr.write(kept)
            sys.stderr.flush()
