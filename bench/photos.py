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


# -- wide gamut -----------------------------------------------------------------------------

# CIE xy of Display P3's primaries (DCI-P3's, with a D65 white and sRGB's tone curve) and sRGB's.
DISPLAY_P3_XY = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
SRGB_XY = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
_D65, _D50 = np.array([0.3127, 0.3290]), np.array([0.9642, 1.0, 0.8249])
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def colorants(primaries: tuple[tuple[float, float], ...]) -> np.ndarray:
    """RGB → XYZ under D50 (the ICC connection space), columns = rXYZ, gXYZ, bXYZ tags:
    the primaries' matrix for a D65 white, adapted to D50 with Bradford, as ICC profiles store it."""
    xyz = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in primaries]).T
    white = np.array([_D65[0] / _D65[1], 1.0, (1 - _D65.sum()) / _D65[1]])
    m65 = xyz * np.linalg.solve(xyz, white)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ _D50) / (_BRADFORD @ white)) @ _BRADFORD
    return adapt @ m65


@functools.cache
def display_p3_profile() -> bytes:
    """An ICC profile for Display P3, the space of iPhone and most Android photos.

    No P3 profile ships offline here (Apple's is in macOS, colord's is not installed), and
    Pillow's ImageCms creates only sRGB, Lab and XYZ profiles. Display P3 *is* sRGB's tone
    curve with other primaries, so this takes littleCMS's own sRGB profile
    (``ImageCms.createProfile("sRGB")``, ICC v4, parametric curves) and writes P3's colorants
    (computed by ``colorants``; the same as Apple's profile to 1e-4) into its rXYZ, gXYZ and
    bXYZ tags, P3's xy into chrm and a new description; littleCMS builds its transforms from
    exactly those tags."""
    import struct

    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {
        bytes(data[132 + 12 * i : 136 + 12 * i]): struct.unpack(">II", data[136 + 12 * i : 144 + 12 * i])
        for i in range(struct.unpack(">I", data[128:132])[0])
    }
    matrix = colorants(DISPLAY_P3_XY)
    for column, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ")):
        offset = tags[sig][0] + 8
        data[offset : offset + 12] = struct.pack(">3i", *(round(v * 65536) for v in matrix[:, column]))
    offset = tags[b"chrm"][0] + 12
    data[offset : offset + 24] = struct.pack(">6I", *(round(v * 65536) for xy in DISPLAY_P3_XY for v in xy))
    desc = bytes(data[tags[b"desc"][0] : tags[b"desc"][0] + tags[b"desc"][1]])
    old = "sRGB built-in".encode("utf-16-be")
    assert old in desc, "littleCMS's sRGB profile changed its description"
    start = tags[b"desc"][0] + desc.index(old)
    data[start : start + len(old)] = "Display P3 v4".encode("utf-16-be")
    data[84:100] = bytes(16)  # profile ID (an MD5, optional): none
    return bytes(data)


def to_display_p3(image: Image.Image) -> Image.Image:
    """An sRGB picture converted to Display P3 (littleCMS), same colours, other numbers."""
    from PIL import ImageCms

    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    return ImageCms.profileToProfile(image, ImageCms.createProfile("sRGB"), p3, outputMode=image.mode)
