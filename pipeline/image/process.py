"""The CPU stage: bytes of one image → thumbnails on disk + hashes + metadata.

The only module that imports Pillow. ``process_image`` is called from a thread pool inside
a worker process: Pillow releases the GIL while it decodes, resizes and encodes into a
real file, so threads scale; this module keeps no mutable state of its own (Pillow's
module-level bomb limit is only ever raised, under a lock).

Per image, in order (each step is a small function below):

1. SHA-256 of the bytes; open with the allowlisted decoders only; refuse over-size images
   from the header, before any pixel is allocated.
2. JPEG: ``draft`` to the smallest DCT scale still >= the largest scale any output needs
   (for ``cover`` the box's short side decides), so libjpeg decodes at 1/2, 1/4 or 1/8
   size; WebP: libwebp's scaling decoder writes the picture at twice that scale
   (``webp.py``); decode once.
3. Normalise the mode (CMYK → RGB, palette → RGB/RGBA, 16-bit → 8-bit scaled, ...).
   Colour: an RGB picture with an ICC profile (Display P3 from phones, Adobe RGB from
   cameras) is converted to sRGB by littleCMS on the first (largest) reduced step, and
   thumbnails carry no profile; a profile littleCMS cannot use is dropped (the pixels are
   taken as sRGB, as browsers do). Gray profiles are passed on.
4. One resize chain, largest scale first, each step from the previous whole image (BICUBIC
   with ``reducing_gap=2.0``); ``cover`` resizes its centre crop (a float box, as
   ``ImageOps.fit``) from it, ``pad`` centres the fitted image on its box. The geometry is
   planned on the image as displayed; the EXIF orientation is applied to the first reduced
   image, not the full one: same pixels as ``ImageOps.exif_transpose`` first, far cheaper.
5. Each requested size is encoded straight into a store temp file (not a BytesIO: Pillow
   holds the GIL for in-memory encodes). Content-addressed targets that exist are skipped.
6. dHash/pHash from the <= 256 px step (see ``HASH_SIZE``), then the original is kept.

Errors: per-item failures raise ``ItemError`` with NOT_IMAGE, TRUNCATED, DECODE_ERROR or
TOO_MANY_PIXELS; ``StorageError`` from the store passes through; anything else is a bug
and propagates (the worker records it as INTERNAL).
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, UnidentifiedImageError

try:
    from PIL import ImageCms
except ImportError:  # a Pillow built without littleCMS: profiles are passed on instead
    ImageCms = None  # type: ignore[assignment]

from pipeline.config import ProcessOptions, color_rgba, size_box
from pipeline.errors import ErrorClass, ItemError
from pipeline.image import webp
from pipeline.models import ImageInfo, Thumbnail
from pipeline.store import Store

# HEIC/HEIF (iPhone photos) decode through the optional `heif` extra, pillow-heif, registered
# here (the only Pillow importer) when it is installed. Without it a HEIF row fails as
# not_image with the command that installs it (``_EXTRAS``). thumbnails=False: decode the image
# itself, never a small preview embedded in the file (its own encode, often lower quality);
# depth and auxiliary images are never used. AVIF needs nothing: Pillow >= 11.3 decodes it.
# JPEG XL is not supported: pillow-jxl-plugin 1.3.8 decodes every pixel inside Image.open,
# before the size can be checked (a 10 KB file held 137 MB), so the pixel limit cannot hold.
try:
    import pillow_heif
except ImportError:
    pass  # the heif extra is not installed
else:
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Hashes are computed from the chain step whose longest side is this: within ~0.3 bits of
# hashing the full image on average, ~40x cheaper (measured), and independent of the
# thumbnail format. If every requested size is smaller, the largest one is used.
HASH_SIZE = 256

_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 2.0
_HASH_RESAMPLE = Image.Resampling.LANCZOS  # what imagehash uses (its ANTIALIAS)

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

_ORIGINAL_EXT = {
    "JPEG": "jpg",
    "MPO": "jpg",  # a JPEG with extra pictures appended (most phone cameras)
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "AVIF": "avif",
    "HEIF": "heic",
}
_SAVE_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "avif": "AVIF"}
# Formats whose decoder comes with an extra: a row of one when it is missing says what to install.
_EXTRAS = {"HEIF": "heif"}

# What Pillow raises for bad data. Anything else (TypeError, KeyError...) is our bug or
# Pillow's and must surface as INTERNAL rather than hide among bad images.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    zlib.error,
)

# Our own check (right after open, from the header) reports over-size images as item
# errors; Pillow's warning for the same thing would only spam the logs.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# ...unless the interpreter runs with -W error, which turns the warning into an exception.
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_limit_lock = threading.Lock()


# -- public ----------------------------------------------------------------------------------


def process_image(data: bytes, *, options: ProcessOptions, store: Store) -> ImageInfo:
    """Decode ``data``, write its thumbnails (and original) to ``store``, return metadata.

    Transparency is never silently lost: for ``thumb_format="jpeg"`` (no alpha channel)
    transparent images are flattened onto white; webp and png keep the alpha channel.
    Hashes are always computed from the image flattened onto white, so they do not depend
    on the thumbnail format.

    Raises ``ItemError`` (NOT_IMAGE, TRUNCATED, DECODE_ERROR, TOO_MANY_PIXELS) for a bad
    image and ``StorageError`` when OUT cannot be written.
    """
    started = time.perf_counter()
    if not data:
        raise ItemError(ErrorClass.NOT_IMAGE, "empty body")
    sha = hashlib.sha256(data).hexdigest()
    _allow_pillow_limit(options.max_pixels)

    if not options.thumbnails:
        return _keep_original_only(data, sha, started, options=options, store=store)

    decoded = _decode(data, options)
    thumbnails, hash_source = _make_thumbnails(decoded, sha, options=options, store=store)

    original_path = _keep_original(data, sha, decoded.format, options=options, store=store)
    gray = hash_source.convert("L")  # once for both hashes

    return ImageInfo(
        sha256=sha,
        bytes=len(data),
        format=decoded.format,
        mode=decoded.mode,
        width=decoded.width,
        height=decoded.height,
        n_frames=decoded.n_frames,
        dhash=dhash(gray),
        phash=phash(gray),
        thumbnails=thumbnails,
        original_path=original_path,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )


def _keep_original(data: bytes, sha: str, fmt: str, *, options: ProcessOptions, store: Store) -> str | None:
    if not options.keep_originals:
        return None
    path = store.original_relpath(sha, _original_ext(fmt))
    store.write_bytes(path, data)
    return path


def _keep_original_only(data: bytes, sha: str, started: float, *, options: ProcessOptions, store: Store) -> ImageInfo:
    """``thumbnails=False``: no pixel is decoded; the header alone gives format and size.

    Reading the header costs ~35 us against ~140 us for the SHA-256 of a 260 KB photo
    (measured, bench/), and it still refuses what is not an allowed image.
    """
    im, fmt = _open(data, options)
    with im:
        orientation = _orientation(im)
        width, height = im.size
        mode, n_frames = im.mode, int(getattr(im, "n_frames", 1))
    if orientation in _SWAPS_AXES:
        width, height = height, width
    original_path = _keep_original(data, sha, fmt, options=options, store=store)
    return ImageInfo(
        sha256=sha,
        bytes=len(data),
        format=fmt,
        mode=mode,
        width=width,
        height=height,
        n_frames=n_frames,
        dhash=None,
        phash=None,
        thumbnails=(),
        original_path=original_path,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )


def dhash(image: Image.Image) -> str:
    """64-bit difference hash as 16 hex digits; same bits as ``str(imagehash.dhash(image))``.

    Grayscale, LANCZOS to 9x8, bit = pixel > its left neighbour, row-major, first bit most
    significant.
    """
    pixels = np.asarray(image.convert("L").resize((9, 8), _HASH_RESAMPLE), dtype=np.int16)
    return _bits_to_hex(pixels[:, 1:] > pixels[:, :-1])


def _dct_matrix(n: int, keep: int) -> np.ndarray:
    # Rows of scipy.fftpack.dct (type II, norm=None): 2 * cos(pi * k * (2i + 1) / (2n)).
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_PHASH_DCT = _dct_matrix(32, 8)  # only the 8 lowest frequencies are ever used


def phash(image: Image.Image) -> str:
    """64-bit perceptual hash as 16 hex digits; same bits as ``str(imagehash.phash(image))``.

    Grayscale, LANCZOS to 32x32, 2-D DCT-II (columns then rows), top-left 8x8, bit =
    coefficient > median, row-major, first bit most significant.
    """
    pixels = np.asarray(image.convert("L").resize((32, 32), _HASH_RESAMPLE), dtype=np.float64)
    low = _PHASH_DCT @ pixels @ _PHASH_DCT.T
    # A matrix product rounds differently from scipy's FFT: coefficients that are exactly
    # zero there (flat or symmetric images) come out as +-1e-13 here and would flip bits
    # that compare against a zero median. Rounding far below any real difference removes
    # that noise.
    low = np.round(low, 6)
    # The median of 64 values (mean of the middle two) from a sort: ~1 us, np.median ~7 us.
    ranked = np.sort(low, axis=None)
    return _bits_to_hex(low > (ranked[31] + ranked[32]) / 2)


def _bits_to_hex(bits: np.ndarray) -> str:
    return np.packbits(bits.ravel()).tobytes().hex()


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


# -- decode ----------------------------------------------------------------------------------


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


@functools.lru_cache(maxsize=8)
def _known_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    # Image.open raises KeyError for a name no plugin registers; an unknown name simply
    # matches nothing.
    Image.init()
    return tuple(f for f in formats if f in Image.OPEN)


def _format_allowed(fmt: str, formats: tuple[str, ...]) -> bool:
    # Pillow's JPEG opener returns MPO for JPEGs carrying extra pictures: still a JPEG.
    return fmt in formats or (fmt == "MPO" and "JPEG" in formats)


def _allowed(formats: tuple[str, ...]) -> str:
    return "allowed: " + (", ".join(formats) if formats else "none")


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


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8) exactly as ImageOps.exif_transpose reads it; 1 if unreadable.

    A corrupt EXIF block must not cost us an otherwise good image.
    """
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except (*_DECODE_ERRORS, KeyError, IndexError, TypeError):
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _normalize_mode(im: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, RGB or RGBA, the modes every step below handles well.

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


# -- failures --------------------------------------------------------------------------------


def _unidentified(data: bytes, formats: tuple[str, ...], max_pixels: int) -> ItemError:
    sniffed, description = _sniff(data)
    if sniffed is None:
        return ItemError(ErrorClass.NOT_IMAGE, description)
    if not _format_allowed(sniffed, formats):
        return ItemError(ErrorClass.NOT_IMAGE, f"{description}; format not allowed ({_allowed(formats)})")
    if sniffed in _EXTRAS and sniffed not in _known_formats(formats):
        return ItemError(
            ErrorClass.NOT_IMAGE, f"{description}; no decoder installed: pip install 'pipeline[{_EXTRAS[sniffed]}]'"
        )
    # The magic says an allowed image format but no decoder accepts the header. libavif
    # refuses sizes over its own limit (16384 x 16384) that way: still a pixel bomb.
    declared = _declared_size(data) if sniffed in ("AVIF", "HEIF") else None
    if declared is not None and declared[0] * declared[1] > max_pixels:
        try:
            _check_pixels(declared, max_pixels)
        except ItemError as exc:
            return exc
    if _looks_truncated(sniffed, data):
        return ItemError(
            ErrorClass.TRUNCATED, f"{sniffed} file cut short before its header ends ({len(data)} bytes)"
        )
    return ItemError(ErrorClass.DECODE_ERROR, f"{sniffed} file with an unreadable header")


def _decode_failure(data: bytes, fmt: str | None, exc: BaseException) -> ItemError:
    message = str(exc) or type(exc).__name__
    fmt = fmt or _sniff(data)[0]
    if "truncated" in message or (fmt is not None and _looks_truncated(fmt, data)):
        return ItemError(ErrorClass.TRUNCATED, f"{fmt or 'image'} file is truncated: {message}")
    return ItemError(ErrorClass.DECODE_ERROR, f"cannot decode {fmt or 'image'}: {message}")


def _looks_truncated(fmt: str, data: bytes) -> bool:
    """Whether the container says more bytes should follow (format-level, cheap)."""
    tail = data.rstrip(b"\x00\r\n ")[-16:]
    if fmt in ("JPEG", "MPO"):
        return not tail.endswith(b"\xff\xd9")  # EOI marker
    if fmt == "PNG":
        return b"IEND" not in tail
    if fmt == "GIF":
        return not tail.endswith(b";")  # trailer
    if fmt == "WEBP" and len(data) >= 8:
        return struct.unpack("<I", data[4:8])[0] + 8 > len(data)  # RIFF size
    if fmt == "BMP" and len(data) >= 6:
        return struct.unpack("<I", data[2:6])[0] > len(data)  # bfSize
    if fmt in ("AVIF", "HEIF"):
        return _boxes_cut_short(data)
    return False


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The largest image size an AVIF/HEIF file declares (its 'ispe' properties), unchecked.

    Only for the error message of a file no decoder opened; a grid image declares its tiles'
    sizes and its own, so the largest is the picture's.
    """
    best: tuple[int, int] | None = None
    at = data.find(b"ispe", 4, 1 << 16)
    while at != -1 and at + 16 <= len(data):
        size = (int.from_bytes(data[at + 8 : at + 12], "big"), int.from_bytes(data[at + 12 : at + 16], "big"))
        if best is None or size[0] * size[1] > best[0] * best[1]:
            best = size
        at = data.find(b"ispe", at + 4, 1 << 16)
    return best


def _boxes_cut_short(data: bytes) -> bool:
    """Whether the top-level ISO-BMFF boxes (ftyp, meta, mdat...) declare more bytes than there are."""
    at = 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        if size == 1:  # a 64-bit size follows the type
            if at + 16 > len(data):
                return True
            size = int.from_bytes(data[at + 8 : at + 16], "big")
        elif size == 0:  # the last box runs to the end of the file
            return False
        if size < 8:
            return False  # not a box structure: nothing to say
        at += size
    return at != len(data)  # past the end, or a box header cut in the middle


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_NON_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF document"),
    (b"\x1f\x8b", "gzip data"),
    (b"PK\x03\x04", "ZIP archive"),
)


def _sniff(data: bytes) -> tuple[str | None, str]:
    """(image format or None, what the first bytes look like) for error messages."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", "WEBP image"
    if data[4:8] == b"ftyp":
        return _sniff_iso_media(data)
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt, f"{fmt} image"
    for magic, what in _NON_IMAGE_MAGIC:
        if data.startswith(magic):
            return None, what
    return None, _describe_text(data)


_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# HEVC-coded HEIF (HEIC) brands, then the generic HEIF image/sequence brands (mif1, msf1) that
# AVIF files carry too: the compatible brands decide between them.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})


def _sniff_iso_media(data: bytes) -> tuple[str | None, str]:
    """AVIF, HEIF or other ISO media (MP4, MOV...) from the ftyp box's major and compatible brands."""
    major = data[8:12]
    box_end = min(int.from_bytes(data[:4], "big"), len(data), 1024)
    compatible = {data[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _AVIF_BRANDS:
        return "AVIF", "AVIF image"
    if major in _HEIC_BRANDS:
        return "HEIF", "HEIF image"
    if compatible & _AVIF_BRANDS:
        return "AVIF", "AVIF image"
    if major in _HEIF_BRANDS or compatible & (_HEIC_BRANDS | _HEIF_BRANDS):
        return "HEIF", "HEIF image"
    return None, "ISO media file (video?), not an image"


def _describe_text(data: bytes) -> str:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "HTML document, not an image"
    if b"<svg" in head:
        return "SVG image (vector graphics are not supported)"
    if head.startswith(b"<?xml"):
        return "XML document, not an image"
    if head.startswith((b"{", b"[")):
        return "JSON or text document, not an image"
    if _is_text(data[:256]):
        return "text document, not an image"
    return f"not a recognised image format (starts with {data[:8].hex(' ')})"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c.isspace() for c in text)


# -- thumbnails ------------------------------------------------------------------------------


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


def _make_thumbnails(
    decoded: _Decoded, sha: str, *, options: ProcessOptions, store: Store
) -> tuple[tuple[Thumbnail, ...], Image.Image]:
    """Run the resize chain, write requested sizes; return them and the hash source."""
    width, height = decoded.width, decoded.height
    steps = [_plan(width, height, s, options) for s in options.sizes]
    chain = sorted([*steps, _hash_plan(width, height, options.sizes)], key=lambda s: -s.scale)
    current = decoded.image
    # The part of ``current`` that is the whole image (a JPEG draft decodes a few pixels more).
    source: _Rect = decoded.draft_box or (0.0, 0.0, float(current.width), float(current.height))
    orientation = decoded.orientation
    written: dict[int | str, Thumbnail] = {}
    hash_source = current
    to_srgb = _srgb_transform(decoded)
    for step in chain:
        out = _take(current, source, orientation, (width, height), step.rect, step.content)
        if to_srgb is not None and current is decoded.image:
            out = to_srgb.apply(out)  # on reduced pixels only; once ``current`` is, it stays sRGB
        if step.rect is None and step.scale <= 1:
            # The whole image, reduced: later (smaller) steps start from it. Never from an
            # enlarged one (softer than the pixels it came from).
            current, source, orientation = out, (0.0, 0.0, float(out.width), float(out.height)), 1
        if step.size is None:
            hash_source = _flatten_on_white(out)
            continue
        if step.canvas is not None:
            out = _pad(out, step.canvas, options.pad_color)
        written[step.size] = _write_thumbnail(out, step.size, sha, decoded, options=options, store=store)
    return tuple(written[s] for s in options.sizes), hash_source


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


def _write_thumbnail(
    im: Image.Image, size: int | str, sha: str, decoded: _Decoded, *, options: ProcessOptions, store: Store
) -> Thumbnail:
    rel = store.thumb_relpath(sha, size, options.thumb_ext, variant=options.thumb_variant)
    thumbnail = Thumbnail(size=size, width=im.width, height=im.height, path=rel)
    if store.exists(rel):  # content-addressed: same sha, size, format and quality → same file
        return thumbnail
    fmt = options.thumb_format
    out = _flatten_on_white(im) if fmt == "jpeg" else im
    params: dict[str, object] = {}
    # Always given: without it Pillow's encoders embed ``im.info["icc_profile"]``, which
    # resize and convert copy from the source (a CMYK profile landed in RGB thumbnails) and
    # ImageCms sets to sRGB's. b"": none.
    params["icc_profile"] = _icc_for(decoded.mode, out.mode, decoded.icc_profile) or b""
    if fmt in ("jpeg", "webp", "avif"):
        params["quality"] = options.thumb_quality
    if fmt == "avif":
        # speed: Pillow's default, pinned (a file's name stands for its bytes); one thread, as
        # every worker process already has a core (Pillow's default is every core).
        params.update(speed=6, max_threads=1)
    with store.atomic_path(rel) as tmp:
        # Straight into a file: Pillow releases the GIL only when encoding to a real file.
        out.save(tmp, format=_SAVE_FORMAT[fmt], **params)
    return thumbnail


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


def _original_ext(fmt: str) -> str:
    ext = _ORIGINAL_EXT.get(fmt)
    if ext is not None:
        return ext
    cleaned = "".join(c for c in fmt.lower() if c.isalnum())[:8]
    return cleaned or "bin"
