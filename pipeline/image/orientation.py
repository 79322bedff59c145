"""EXIF orientation: read from the header, as ``ImageOps.exif_transpose`` reads it, and its geometry."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from pipeline.image.formats import _DECODE_ERRORS

ORIENTATION_TAG = 0x0112
# Same table as PIL.ImageOps.exif_transpose.
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8) exactly as ImageOps.exif_transpose reads it; 1 if unreadable.

    A corrupt EXIF block must not cost us an otherwise good image.
    """
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except (*_DECODE_ERRORS, KeyError, IndexError, TypeError):
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


# Where a point (u, v) of the displayed image, in 0..1, lies in the stored one, per EXIF
# orientation (the inverse of ``_TRANSPOSE``).
_STORED_POINT: dict[int, Callable[[float, float], tuple[float, float]]] = {
    1: lambda u, v: (u, v),
    2: lambda u, v: (1 - u, v),
    3: lambda u, v: (1 - u, 1 - v),
    4: lambda u, v: (u, 1 - v),
    5: lambda u, v: (v, u),
    6: lambda u, v: (v, 1 - u),
    7: lambda u, v: (1 - v, 1 - u),
    8: lambda u, v: (1 - v, u),
}
