"""What a browser uploads, decoded by the page itself: every limit is checked on the file's header,
before a pixel is decoded.

Gradio's image components decode an upload before any handler sees it (a 12000 x 12000 mask
decoded to 4 GB, a decompression bomb or a text file ended in Gradio's own error), so the page
takes the uploaded files undecoded (`undecoded`) and reads them here: a file that is not an
image, is too large (`MAX_PIXELS`, masks and painted layers too) or is a decompression bomb is a
`UserError` naming the file, which the page shows as a message.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

from errors import UserError
from segmenter.images import as_rgb

MAX_PIXELS = 25_000_000  # 5000 x 5000: larger photos are refused, not silently shrunk


def check_size(width: int, height: int, what: str) -> None:
    """Refuse an image over the page's limit.

    Args:
        width, height: its size in pixels.
        what: how to name it in the message.

    Raises:
        UserError: over MAX_PIXELS.
    """
    if width * height > MAX_PIXELS:
        raise UserError(f"{what} is {width}x{height} pixels, over the page's limit of "
                        f"{MAX_PIXELS // 1_000_000} megapixels; shrink it first.")


def open_checked(source, what: str) -> Image.Image:
    """An uploaded image, decoded only once its header passes the size limit.

    Args:
        source: a file path, the file's bytes, or an already decoded numpy array / PIL image
            (checked by its size alone).
        what: how to name it in messages (the file's name as uploaded).

    Returns:
        the decoded PIL image (not yet oriented or converted).

    Raises:
        UserError: not an image, over the limit (a decompression bomb too), or truncated.
    """
    if isinstance(source, np.ndarray):
        check_size(source.shape[1], source.shape[0], what)
        return Image.fromarray(source)
    if isinstance(source, Image.Image):
        check_size(*source.size, what)
        return source
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # The header is checked against MAX_PIXELS below, far under PIL's own warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as e:  # PIL's own ceiling, read from the header
        raise UserError(f"{what} is over the page's limit of {MAX_PIXELS // 1_000_000} "
                        f"megapixels ({e}); shrink it first.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{what} is not an image (PNG, JPEG, ...); upload an image file.") from e
    check_size(*image.size, what)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{what} cannot be decoded ({e}); it may be truncated. Upload it "
                        f"again or save it anew.") from e
    return image


def read_image(source, what: str) -> np.ndarray:
    """An uploaded photo as uint8 RGB, as displayed (EXIF orientation applied).

    Args:
        source: see `open_checked`.
        what: how to name it in messages.

    Returns:
        uint8 (H, W, 3).
    """
    return as_rgb(open_checked(source, what), what)


def upload_name(source, fallback: str) -> str:
    """The name a file was uploaded under (Gradio keeps it as the file's name), or `fallback`."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source)) or fallback
    return fallback


def undecoded(component, editor: bool = False) -> None:
    """Make a Gradio image component (or image editor) hand its handler the uploaded files as
    they are: a path (or, for the editor's large uploads, bytes) instead of decoded pixels.

    Gradio has checked by then that every path is one of its own uploads.

    Args:
        component: a gr.Image or gr.ImageEditor.
        editor: it is an image editor: its value becomes {"background": file, "layers": [files]}.
    """
    def source(file):
        return getattr(file, "path", file)  # a FileData's path, or the bytes of a blob

    def image(payload):
        return None if payload is None else source(payload)

    def editor_value(payload):
        if payload is None:
            return None
        data = component.blob_storage.pop(payload.id, None) if payload.id else payload
        if data is None:
            return {"background": None, "layers": []}
        return {"background": source(data.background),
                "layers": [source(layer) for layer in data.layers or () if layer is not None]}

    component.preprocess = editor_value if editor else image  # this instance only
