"""Real photographs for the benchmarks, at any size and in any format, offline.

scikit-image ships a dozen colour photographs (astronaut, coffee, a cat, a rocket, a
motorcycle, the Hubble deep field, a retina...) in its wheel, so no download is needed.
They are 300-1,400 px; a camera frame is 12 MP. ``photo(seed, width, height)`` crops a
random window of one of them, scales it up with LANCZOS and adds sensor-like grain (per
pixel, per channel, seeded), so every call gives distinct pixels that compress and decode
like a real photograph: smooth regions, edges, texture, noise. Flat synthetic pictures
compress ~10x better and decode faster, which flatters every runner.

``encode(image, fmt)`` writes the formats users meet: JPEG baseline and progressive (4:2:0,
q85, as cameras and CDNs write them), PNG (RGB, or RGBA with an alpha gradient), WebP
(lossy q80), AVIF (q60) and GIF (palette). Needs ``scikit-image`` (``pipeline[bench-speed]``).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

# Colour photographs shipped inside scikit-image's wheel (no pooch download).
SOURCES = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle", "colorwheel",
)  # fmt: skip
FORMATS = ("jpeg", "jpeg-progressive", "png", "png-alpha", "webp", "avif", "gif")
GRAIN = 6.0  # standard deviation of the added noise, in 8-bit levels (ISO 800-ish)


@functools.cache
def _source(name: str) -> np.ndarray:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    if isinstance(pixels, tuple):  # stereo pairs
        pixels = pixels[0]
    return np.ascontiguousarray(pixels[..., :3])


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A distinct photograph of ``width`` x ``height``: a seeded crop of a real one, scaled, with grain."""
    rng = np.random.default_rng(seed)
    src = _source(SOURCES[seed % len(SOURCES)])
    h, w = src.shape[:2]
    # A window of 60-100% of the source with the target's aspect ratio.
    scale = rng.uniform(0.6, 1.0)
    win_w = min(w, int(w * scale), int(h * scale * width / height))
    win_h = max(8, int(win_w * height / width))
    win_w = max(8, win_w)
    x = int(rng.integers(0, max(1, w - win_w + 1)))
    y = int(rng.integers(0, max(1, h - win_h + 1)))
    window = Image.fromarray(src[y : y + win_h, x : x + win_w])
    if rng.random() < 0.5:
        window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    big = np.asarray(window.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
    grain = rng.normal(0.0, GRAIN, size=(height, width, 1)).astype(np.float32)
    chroma = rng.normal(0.0, GRAIN / 3, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(big + grain + chroma, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    """``image`` in one of ``FORMATS``, encoded as a camera, phone or CDN would."""
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=85, subsampling="4:2:0")
    elif fmt == "jpeg-progressive":
        image.save(out, "JPEG", quality=85, subsampling="4:2:0", progressive=True, optimize=True)
    elif fmt == "png":
        image.save(out, "PNG", compress_level=6)
    elif fmt == "png-alpha":
        alpha = np.linspace(255, 64, image.width, dtype=np.uint8)[None, :].repeat(image.height, 0)
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(out, "PNG", compress_level=6)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=80)
    elif fmt == "avif":
        image.save(out, "AVIF", quality=60, speed=8)
    elif fmt == "gif":
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(out, "GIF")
    else:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return out.getvalue()


def unique_copy(jpeg: bytes, index: int) -> bytes:
    """``jpeg`` with a COM segment naming ``index`` after SOI: distinct bytes (and SHA-256),
    the same pixels and decode cost. Cheap way to fill a folder of thousands of camera files."""
    text = f"pipeline-bench {index}".encode()
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:2] + segment + jpeg[2:]
