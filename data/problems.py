"""Bad-input reports shared by dataset readers: one Problem per file, and a strict-mode error."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from data.decode import orient_pair
from errors import UserError


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


def open_pair(image_path: str, mask_path: str, kind: str) -> tuple[Image.Image, Image.Image] | Problem:
    """Open an image and its mask (or label) as displayed: the image's EXIF orientation applied
    to both (data/decode.py); a Problem naming the file when either fails or their sizes differ.

    Args:
        image_path: the image file.
        mask_path: its mask or label file.
        kind: what the second file is, for the messages ("mask", "label").

    Returns:
        (image, mask) of the same size, or a Problem. A rotated image is a new PIL image, whose
        `format` is None.
    """
    image = open_image(image_path, "image")
    if isinstance(image, Problem):
        return image
    mask = open_image(mask_path, kind)
    if isinstance(mask, Problem):
        return mask
    try:
        image, mask = orient_pair(image, mask, image_path=image_path, mask_path=mask_path)
    except UserError as e:
        return Problem(mask_path, str(e))
    if image.size != mask.size:
        return Problem(image_path, f"image is {image.size[0]}x{image.size[1]} but its {kind} "
                                   f"{mask_path} is {mask.size[0]}x{mask.size[1]}")
    return image, mask
