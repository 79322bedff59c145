"""Planning the fit modes (contain, cover, pad): what each output shows, at which size and scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from pipeline.boxes import size_box
from pipeline.config import ProcessOptions
from pipeline.image.hashes import HASH_SIZE
from pipeline.image.orientation import _SWAPS_AXES, _orientation


def fit_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with longest side ``size``, aspect kept; unchanged if already within ``size``.

    Same rounding as Pillow's ``Image.thumbnail((size, size))``.
    """
    return fit_box(width, height, (size, size))


def fit_box(width: int, height: int, box: tuple[int, int], *, upscale: bool = False) -> tuple[int, int]:
    """(w, h) inside ``box``, aspect kept; unchanged if already inside, unless ``upscale``.

    Same rounding as Pillow's ``Image.thumbnail(box)`` (which never enlarges).
    """
    box_w, box_h = box
    if width <= box_w and height <= box_h and not upscale:
        return width, height
    aspect = width / height
    if box_w / box_h >= aspect:
        candidates = (math.floor(box_h * aspect), math.ceil(box_h * aspect))
        w = max(min(candidates, key=lambda n: abs(aspect - n / box_h)), 1)
        return w, box_h
    candidates = (math.floor(box_w / aspect), math.ceil(box_w / aspect))
    h = max(min(candidates, key=lambda n: 0 if n == 0 else abs(aspect - box_w / n)), 1)
    return box_w, h


def _hash_step(sizes: tuple[int | str, ...]) -> int:
    # A box counts by its longest side: `--sizes 256x192 --fit cover` hashes the same 256
    # px whole image as `--sizes 256`; the hash never sees a crop or a border.
    return min(HASH_SIZE, max(max(size_box(s)) for s in sizes))


_Rect = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class _Step:
    """One output of the resize chain, planned on the image as displayed (oriented)."""

    size: int | str | None  # as requested; None: the hash step
    rect: _Rect | None  # the part of the displayed image shown (cover's crop); None: all of it
    content: tuple[int, int]  # that part is resized to this
    canvas: tuple[int, int] | None  # pad: the box the content is centred in
    scale: float  # output pixels per displayed pixel: the chain runs largest first


def _plan(width: int, height: int, size: int | str, options: ProcessOptions) -> _Step:
    """Where ``size`` comes from and what it becomes, for an image shown ``width`` x ``height``.

    Without ``upscale`` nothing is enlarged: ``contain`` keeps a small image's size,
    ``cover`` cuts the box's aspect ratio from it at native scale, ``pad`` centres it
    unscaled on the exact box.
    """
    box = size_box(size)
    if options.fit == "cover":
        # ImageOps.fit's crop (bleed 0, centred): the largest centred part of the box's ratio.
        ratio = box[0] / box[1]
        if width / height == ratio:
            crop_w, crop_h = float(width), float(height)
        elif width / height > ratio:
            crop_w, crop_h = ratio * height, float(height)
        else:
            crop_w, crop_h = float(width), width / ratio
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        rect: _Rect | None = (left, top, left + crop_w, top + crop_h)
        if (crop_w, crop_h) == (width, height):
            rect = None
        if options.upscale or box[0] <= crop_w:
            content = box
        else:
            content = (max(1, round(crop_w)), max(1, round(crop_h)))
        return _Step(size, rect, content, None, max(content[0] / crop_w, content[1] / crop_h))
    content = fit_box(width, height, box, upscale=options.upscale)
    canvas = box if options.fit == "pad" else None
    # The exact scale, not the rounded content's: the JPEG draft chosen for it (ceil of it
    # in both sides) still holds the content, and a longest side drafts as it always did.
    scale = min(box[0] / width, box[1] / height)
    return _Step(size, None, content, canvas, scale if options.upscale else min(1.0, scale))


def _hash_plan(width: int, height: int, sizes: tuple[int | str, ...]) -> _Step:
    side = _hash_step(sizes)
    return _Step(None, None, fit_size(width, height, side), None, min(1.0, side / max(width, height)))


def _draft_scale(im: Image.Image, fmt: str, options: ProcessOptions) -> float:
    """The largest scale any output needs (>= 1: decode in full).

    Planned on the displayed image, so the orientation is read from the header first; only
    JPEG has a draft, and only its header is read for it (PNG's getexif would decode).
    """
    width, height = im.size
    if fmt in ("JPEG", "MPO"):
        shapes = [(height, width) if _orientation(im) in _SWAPS_AXES else (width, height)]
    else:
        shapes = [(width, height), (height, width)]
    return max(
        step.scale
        for w, h in shapes
        for step in (*(_plan(w, h, s, options) for s in options.sizes), _hash_plan(w, h, options.sizes))
    )
