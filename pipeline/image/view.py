"""``thumbnail_view``: a thumbnail file as small arrays, for dedup's thumbnail check."""

from __future__ import annotations

import numpy as np
from PIL import Image


def thumbnail_view(path: str, side: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The image file at ``path`` as ``side`` x ``side`` grayscale floats, an 8x8 RGB grid (64
    rows of R, G, B) and its aspect ratio (width / height).

    The views do not keep the aspect ratio: ``dedup``'s thumbnail check compares pictures at
    the same relative positions; a rotation needs the ratio (a turn of the squashed grid is a
    shear). One open of the file, the ratio read before the draft (which rounds the size).
    ``OSError`` (missing or unreadable file) propagates for the caller to report.
    """
    with Image.open(path) as im:
        aspect = im.width / im.height
        im.draft("RGB", (side, side))
        rgb = im.convert("RGB")
    gray = np.asarray(rgb.convert("L").resize((side, side), Image.Resampling.BOX), np.float64)
    grid = np.asarray(rgb.resize((8, 8), Image.Resampling.BOX), np.float64).reshape(64, 3)
    return gray, grid, aspect
