"""The resize chain's pixels: a part of the displayed image resized from the current step; pad; flatten."""

from __future__ import annotations

from PIL import Image

from pipeline.boxes import color_rgba
from pipeline.image.fit import _Rect
from pipeline.image.orientation import _STORED_POINT, _SWAPS_AXES, _TRANSPOSE

_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 2.0


def _take(
    current: Image.Image,
    source: _Rect,
    orientation: int,
    shown: tuple[int, int],
    rect: _Rect | None,
    size: tuple[int, int],
) -> Image.Image:
    """``rect`` of the displayed image (None: all of it) from ``current``, resized to ``size``.

    ``current`` holds the image in ``source`` (its pixels), stored ``orientation`` (1: as
    displayed); the result is always as displayed.
    """
    u0, v0, u1, v1 = (0.0, 0.0, 1.0, 1.0) if rect is None else (
        rect[0] / shown[0], rect[1] / shown[1], rect[2] / shown[0], rect[3] / shown[1]
    )  # fmt: skip
    raw_size = size
    if orientation != 1:
        point = _STORED_POINT[orientation]
        (a, b), (c, d) = point(u0, v0), point(u1, v1)
        u0, v0, u1, v1 = min(a, c), min(b, d), max(a, c), max(b, d)
        if orientation in _SWAPS_AXES:
            raw_size = (size[1], size[0])
    x0, y0, x1, y1 = source
    box = (x0 + u0 * (x1 - x0), y0 + v0 * (y1 - y0), x0 + u1 * (x1 - x0), y0 + v1 * (y1 - y0))
    out = _resize(current, raw_size, box)
    return out if orientation == 1 else out.transpose(_TRANSPOSE[orientation])


def _resize(im: Image.Image, size: tuple[int, int], box: _Rect) -> Image.Image:
    if box == (0, 0, im.width, im.height):
        if im.size == size:
            return im
        # The whole image: as a resize without a box (same pixels, the same path as before).
        return im.resize(size, _RESAMPLE, reducing_gap=_REDUCING_GAP)
    if all(float(v).is_integer() for v in box) and (box[2] - box[0], box[3] - box[1]) == size:
        return im.crop(tuple(int(v) for v in box))  # native scale: a plain crop, not a resample
    # ``box``: a JPEG draft decodes to ceil(W / scale) pixels of which W / scale are
    # image; resizing from that exact box keeps the geometry of a full decode. A cover's
    # crop is such a float box too (as ImageOps.fit), never rounded to whole pixels.
    return im.resize(size, _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)


def _pad(im: Image.Image, canvas: tuple[int, int], color: str) -> Image.Image:
    """``im`` centred on ``canvas`` filled with ``color`` (the odd pixel goes right/bottom).

    An image with alpha keeps it (JPEG flattens it on white later, the border stays
    ``color``); a transparent colour makes the thumbnail RGBA.
    """
    r, g, b, a = color_rgba(color)
    if a < 255 or im.mode == "RGBA":
        mode, fill = "RGBA", (r, g, b, a)
    elif im.mode == "L" and r == g == b:
        mode, fill = "L", r
    else:
        mode, fill = "RGB", (r, g, b)
    padded = Image.new(mode, canvas, fill)
    offset = ((canvas[0] - im.width) // 2, (canvas[1] - im.height) // 2)
    padded.paste(im if im.mode == mode else im.convert(mode), offset)
    return padded


def _flatten_on_white(im: Image.Image) -> Image.Image:
    if im.mode != "RGBA":
        return im
    background = Image.new("RGB", im.size, (255, 255, 255))
    background.paste(im, mask=im.getchannel("A"))
    return background
