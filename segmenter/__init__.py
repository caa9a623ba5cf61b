"""Segment your own object from a few examples (`from_checkpoint`, `Segmenter`)."""
from segmenter.api import Segmenter, build, from_checkpoint, resolve_init

__all__ = ["Segmenter", "build", "from_checkpoint", "resolve_init"]
