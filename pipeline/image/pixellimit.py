"""The pixel limit: ours, read from the header; Pillow's bomb check kept no stricter than it."""

from __future__ import annotations

import threading
import warnings

from PIL import Image

from pipeline.errors import ErrorClass, ItemError

# Our own check (right after open, from the header) reports over-size images as item
# errors; Pillow's warning for the same thing would only spam the logs.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# ...unless the interpreter runs with -W error, which turns the warning into an exception.
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_limit_lock = threading.Lock()


def _allow_pillow_limit(max_pixels: int) -> None:
    """Keep Pillow's own bomb check (a backstop, it also guards GIF frames) no stricter
    than ours, so raising --max-pixels is not silently capped by Pillow's default.

    Pillow raises above twice MAX_IMAGE_PIXELS; we only ever raise the limit, so threads
    running different options cannot make each other's images fail.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or current >= max_pixels:
        return
    with _limit_lock:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ItemError(
            ErrorClass.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
        )
