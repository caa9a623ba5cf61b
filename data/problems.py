"""Bad-input reports shared by dataset readers: one Problem per file, and a strict-mode error."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Problem:
    """One bad input: the file or folder and what is wrong with it."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ProblemsFound(ValueError):
    """Strict mode found problems in the input; nothing was used."""

    def __init__(self, problems: list[Problem], source: str):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in {source}, first: {problems[0]}; "
                         f"strict: nothing used. Fix or remove the files listed above.")


def open_image(path: str, kind: str) -> Image.Image | Problem:
    """Open and fully decode an image file; a Problem naming it when that fails.

    Args:
        path: the file.
        kind: what it is, for the message ("image", "mask", "label").

    Returns:
        the decoded PIL image, or a Problem.
    """
    try:
        image = Image.open(path)
        image.load()  # decodes everything: truncated or corrupt data fails here
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return Problem(path, f"corrupt or unreadable {kind} ({type(e).__name__}: {e})")
