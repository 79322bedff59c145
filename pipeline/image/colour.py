"""Colour: embedded RGB profiles converted to sRGB by littleCMS; which profile a thumbnail carries."""

from __future__ import annotations

import functools
import struct
from io import BytesIO

import numpy as np
from PIL import Image

try:
    from PIL import ImageCms
except ImportError:  # a Pillow built without littleCMS: profiles are passed on instead
    ImageCms = None  # type: ignore[assignment]

from pipeline.image.decode import _Decoded

_RGB_FAMILY = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})
_GRAY_FAMILY = frozenset({"L", "LA", "La", "1"})


def _icc_for(source_mode: str, out_mode: str, icc: bytes | None) -> bytes | None:
    """The source's ICC profile if it still describes the output's colour space.

    RGB output is sRGB and untagged (``_srgb_transform``), unless Pillow has no littleCMS:
    then an RGB profile is passed on to RGB output. A gray profile describes gray output;
    after CMYK → RGB or gray → RGBA it would describe the wrong space, so it is dropped.
    """
    if icc is None:
        return None
    if source_mode in _RGB_FAMILY and out_mode in ("RGB", "RGBA"):
        return icc if ImageCms is None else None
    if source_mode in _GRAY_FAMILY and out_mode == "L":
        return icc
    return None


def _srgb_transform(decoded: _Decoded) -> ImageCms.ImageCmsTransform | None:
    """The transform from the picture's embedded RGB profile to sRGB, or None (no profile,
    not RGB, a profile littleCMS cannot read or use: the pixels are then taken as sRGB).

    Thumbnails are converted rather than tagged, as libvips and sharp do by default:
    browsers show both the same, but a program reading the numbers (training code, our
    dedup's thumbnail check, the hashes) sees P3 or Adobe RGB ones as dull sRGB, and a
    profile adds 0.5-3 KB to a ~10 KB thumbnail. Measured: bench/README.md, "Colour".
    """
    if ImageCms is None or decoded.icc_profile is None or decoded.mode not in _RGB_FAMILY:
        return None
    mode = decoded.image.mode
    return _transform_to_srgb(decoded.icc_profile, mode) if mode in ("RGB", "RGBA") else None


@functools.lru_cache(maxsize=32)
def _transform_to_srgb(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    # Building one costs ~5 ms; photos of a crawl share a handful of profiles.
    try:
        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        if profile.profile.xcolor_space.strip() != "RGB":
            return None
        # NOCACHE: littleCMS's one-pixel cache is written during a transform, and one
        # transform serves every thread of the process.
        transform = ImageCms.buildTransform(profile, _SRGB, mode, mode, flags=ImageCms.Flags.NOCACHE)
        probe = _SRGB_PROBE if mode == "RGB" else _SRGB_PROBE.convert("RGBA")
        moved = np.abs(np.asarray(transform.apply(probe), np.int16) - np.asarray(probe, np.int16))
    except (OSError, ValueError, TypeError, struct.error):  # ImageCms.PyCMSError is an OSError
        return None
    # An sRGB profile (most camera JPEGs carry one): applying it would cost ~1 ms per image
    # (littleCMS does ~30 ns a pixel here) to move no value by more than rounding.
    return None if moved.max() <= 1 else transform


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")) if ImageCms is not None else None
# Every 17th level of R, G and B, 0 to 255 (4,096 colours, the corners of the gamut included).
_SRGB_PROBE = Image.fromarray(
    np.stack(np.meshgrid(*[np.arange(0, 256, 17, dtype=np.uint8)] * 3, indexing="ij"), -1).reshape(16, 256, 3)
)
