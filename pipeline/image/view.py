"""``thumbnail_view``: a thumbnail file as small arrays, for dedup's thumbnail check."""

from __future__ import annotations

import numpy as np
from PIL import Image


def thumbnail_pixels(path: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The image file at ``path`` as ``side`` x ``side`` grayscale floats and an 8x8 RGB grid.

    The grid comes as 64 rows of (R, G, B). Aspect ratio is not kept: both serve ``dedup``'s
    thumbnail check, which compares pictures at the same relative positions. ``OSError``
    (missing or unreadable file) propagates for the caller to report.
    """
    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        rgb = im.convert("RGB")
    gray = np.asarray(rgb.convert("L").resize((side, side), Image.Resampling.BOX), np.float64)
    grid = np.asarray(rgb.resize((8, 8), Image.Resampling.BOX), np.float64).reshape(64, 3)
    return gray, grid


def thumbnail_view(path: str, side: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``thumbnail_pixels`` plus the picture's aspect ratio (width / height), which the
    square grid loses and a rotation needs (a turn of the squashed grid is a shear)."""
    with Image.open(path) as im:
        aspect = im.width / im.height
    gray, grid = thumbnail_pixels(path, side)
    return gray, grid, aspect
