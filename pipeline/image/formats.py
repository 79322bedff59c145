"""Formats: the allowlist, the decoders (HEIF by pillow-heif), sniffing and the wording of failures."""

from __future__ import annotations

import functools
import struct
import zlib

from PIL import Image

from pipeline.errors import ErrorClass, ItemError
from pipeline.image.pixellimit import _check_pixels

# HEIC/HEIF (iPhone photos) decode through the optional `heif` extra, pillow-heif, registered
# here (image/ is the only Pillow importer) when it is installed. Without it a HEIF row fails as
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


def _original_ext(fmt: str) -> str:
    ext = _ORIGINAL_EXT.get(fmt)
    if ext is not None:
        return ext
    cleaned = "".join(c for c in fmt.lower() if c.isalnum())[:8]
    return cleaned or "bin"
