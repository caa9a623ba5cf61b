"""Writes a crash never leaves half done: each goes to a temporary sibling, then os.replace."""
from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> str:
    """Write `text` to `path` atomically (flushed to disk before the rename).

    Args:
        path: the file to write.
        text: its whole content.

    Returns:
        path.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"  # the suffix tells savefig the format
    fig.savefig(tmp, **savefig_kwargs)
    os.replace(tmp, path)
    return path
