"""The project's one error type for problems a user can cause (a bad file, folder or flag).

Raised where input enters, with a message that names the file, flag or value and the fix; the
entry points catch it once and print it as one line with exit status 2. It is a ValueError, so
callers that already expect ValueError for bad input keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad input; the message is one line naming what is wrong and how to fix it."""


class DivergenceError(UserError, FloatingPointError):
    """Training produced non-finite or runaway values; nothing after the last good state saved."""
