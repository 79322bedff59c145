"""Decoding once: open with the allowlisted decoders, JPEG draft or scaled WebP, mode normalised."""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.config import ProcessOptions
from pipeline.errors import ErrorClass, ItemError
from pipeline.image import webp
from pipeline.image.fit import _draft_scale
from pipeline.image.formats import (
    _DECODE_ERRORS,
    _allowed,
    _decode_failure,
    _format_allowed,
    _known_formats,
    _unidentified,
)
from pipeline.image.orientation import _SWAPS_AXES, _orientation
from pipeline.image.pixellimit import _BOMB, _check_pixels


@dataclass(frozen=True, slots=True)
class _Decoded:
    """One decoded frame, mode-normalised, possibly reduced by JPEG draft, not oriented."""

    image: Image.Image
    draft_box: tuple[float, float, float, float] | None  # source box within ``image``
    format: str
    mode: str  # as stored in the file
    width: int  # full resolution, as displayed (after orientation)
    height: int
    orientation: int
    n_frames: int
    icc_profile: bytes | None


def _open(data: bytes, options: ProcessOptions) -> tuple[ImageFile.ImageFile, str]:
    """Open (header only) with the allowlisted decoders; (image, format) or ``ItemError``."""
    try:
        im = Image.open(BytesIO(data), formats=_known_formats(options.formats))
    except UnidentifiedImageError as exc:
        raise _unidentified(data, options.formats, options.max_pixels) from exc
    except _BOMB as exc:
        raise ItemError(ErrorClass.TOO_MANY_PIXELS, str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise _decode_failure(data, None, exc) from exc
    fmt = im.format or "?"
    if not _format_allowed(fmt, options.formats):
        im.close()
        raise ItemError(ErrorClass.NOT_IMAGE, f"{fmt} image; format not allowed ({_allowed(options.formats)})")
    return im, fmt


def _decode(data: bytes, options: ProcessOptions) -> _Decoded:
    im, fmt = _open(data, options)
    _check_pixels(im.size, options.max_pixels)

    try:
        return _load(im, fmt, options, data)
    except _BOMB as exc:  # not an OSError; Pillow checks GIF frames too
        raise ItemError(ErrorClass.TOO_MANY_PIXELS, str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise _decode_failure(data, fmt, exc) from exc


def _load(im: ImageFile.ImageFile, fmt: str, options: ProcessOptions, data: bytes) -> _Decoded:
    mode = im.mode
    full_w, full_h = im.size
    # Counted before load: counting seeks through frames, and seeking back after load
    # would throw away the decoded first frame.
    n_frames = int(getattr(im, "n_frames", 1))
    draft_box = None
    scale = _draft_scale(im, fmt, options)
    pixels: Image.Image | None = None
    if fmt == "WEBP" and n_frames == 1:
        pixels = _webp_scaled(data, (full_w, full_h), scale)
    if pixels is None:
        if scale < 1:
            box = (max(1, math.ceil(full_w * scale)), max(1, math.ceil(full_h * scale)))
            result = im.draft(im.mode, box)  # no-op (None) for anything but JPEG
            if result is not None:
                draft_box = result[1]
        im.load()
        pixels = _normalize_mode(im)
    orientation = _orientation(im)
    icc = im.info.get("icc_profile") or None
    width, height = (full_h, full_w) if orientation in _SWAPS_AXES else (full_w, full_h)
    return _Decoded(
        image=pixels,
        draft_box=draft_box,
        format=fmt,
        mode=mode,
        width=width,
        height=height,
        orientation=orientation,
        n_frames=n_frames,
        icc_profile=icc if isinstance(icc, bytes) else None,
    )


# A WebP is decoded scaled only when the outputs need under 1 / this of its pixels per side,
# and then at this many times the largest scale they need: the BICUBIC step after it (as
# ``reducing_gap``) keeps the thumbnail within ~1 dB of a full decode (46.5 vs 47.2 dB
# against full + LANCZOS; straight to the output size, libwebp's box filter alone: 44.6 dB).
# Measured: bench/formats.py.
_WEBP_OVERSCALE = 2


def _webp_scaled(data: bytes, size: tuple[int, int], scale: float) -> Image.Image | None:
    """A WebP decoded by libwebp straight at ``_WEBP_OVERSCALE`` x ``scale`` (the largest
    scale any output needs, ``_draft_scale``), in stored orientation; None when a full decode
    through Pillow is needed (small enough, animated, libwebp not reachable)."""
    wanted = _WEBP_OVERSCALE * scale
    if wanted >= 1:
        return None
    lib = webp.load(Path(PIL.__file__).parent)
    if lib is None:
        return None
    width, height = size
    pixels = webp.decode_scaled(lib, data, (max(1, round(width * wanted)), max(1, round(height * wanted))))
    return None if pixels is None else Image.fromarray(pixels)


def _normalize_mode(im: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, RGB or RGBA, the modes every later step handles well.

    Done before resizing because Pillow resizes "1" and "P" with NEAREST only.
    """
    mode = im.mode
    if mode in ("L", "RGB") and im.info.get("transparency") is not None:
        return im.convert("RGBA")  # a PNG tRNS colour key
    if mode in ("L", "RGB", "RGBA"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        return im.convert("RGBA" if im.has_transparency_data else "RGB")
    if mode in ("LA", "La", "RGBa"):
        return im.convert("RGBA")
    if mode.startswith(("I", "F")):
        return _to_8bit_gray(im)
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """16/32-bit and float grayscale → L, scaled over the type's range, not clipped.

    Pillow's own convert("L") clips: a 16-bit image would come out almost all white.
    Scaling by the nominal range (not min..max) keeps a dark image dark.
    """
    pixels = np.asarray(im)
    if pixels.dtype.kind == "f":
        low, high = (0.0, 1.0) if pixels.min() >= 0 and pixels.max() <= 1 else (pixels.min(), pixels.max())
    elif im.mode.startswith("I;16") or (pixels.min() >= 0 and pixels.max() > 255 and pixels.max() <= 65535):
        low, high = 0, 65535
    elif pixels.min() >= 0 and pixels.max() <= 255:
        low, high = 0, 255
    else:
        low, high = int(pixels.min()), int(pixels.max())
    span = float(high - low) or 1.0
    scaled = (pixels.astype(np.float32) - np.float32(low)) * np.float32(255.0 / span)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
