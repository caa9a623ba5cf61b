"""The project's error types, imported by every package (this module imports nothing).

* `UserError`: a bad input a user can fix (a file, folder, flag or value). Raised where the
  input enters, with a message that names it and the fix; the entry points print it as one line
  and exit with status 2. It is a ValueError, so callers that expect ValueError for bad input
  keep working.
* `TrainingError`: the inputs were fine, but training went wrong (it diverged). The entry points
  print it as one line and exit with status 1.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad input; the message is one line naming what is wrong and how to fix it."""


class TrainingError(RuntimeError):
    """Training failed on valid inputs; the message says where and what was kept."""


class DivergenceError(TrainingError, FloatingPointError):
    """Training produced non-finite or runaway values; nothing after the last good state saved."""
