"""One image, end to end: bytes → thumbnails on disk + hashes + metadata; the image stage's entry.

``process_image`` is called from a thread pool inside a worker process: Pillow releases
the GIL while it decodes, resizes and encodes into a real file, so threads scale; the
package keeps no mutable state of its own (Pillow's module-level bomb limit is only ever
raised, under a lock: ``pixellimit.py``).

Per image, in order (the module doing each step in brackets):

1. SHA-256 of the bytes; open with the allowlisted decoders only (``formats.py``,
   ``decode.py``); refuse over-size images from the header, before any pixel is allocated
   (``pixellimit.py``).
2. JPEG: ``draft`` to the smallest DCT scale still >= the largest scale any output needs
   (for ``cover`` the box's short side decides; ``fit.py``), so libjpeg decodes at 1/2,
   1/4 or 1/8 size; WebP: libwebp's scaling decoder writes the picture at twice that scale
   (``webp.py``); decode once (``decode.py``).
3. Normalise the mode (CMYK → RGB, palette → RGB/RGBA, 16-bit → 8-bit scaled, ...).
   Colour: an RGB picture with an ICC profile (Display P3 from phones, Adobe RGB from
   cameras) is converted to sRGB by littleCMS on the first (largest) reduced step, and
   thumbnails carry no profile; a profile littleCMS cannot use is dropped (the pixels are
   taken as sRGB, as browsers do). Gray profiles are passed on (``colour.py``).
4. One resize chain, largest scale first, each step from the previous whole image (BICUBIC
   with ``reducing_gap=2.0``); ``cover`` resizes its centre crop (a float box, as
   ``ImageOps.fit``) from it, ``pad`` centres the fitted image on its box. The geometry is
   planned on the image as displayed; the EXIF orientation is applied to the first reduced
   image, not the full one: same pixels as ``ImageOps.exif_transpose`` first, far cheaper
   (the chain: ``_make_thumbnails`` here; plans: ``fit.py``; pixels: ``resize.py``;
   orientation: ``orientation.py``).
5. Each requested size is encoded straight into a store temp file (not a BytesIO: Pillow
   holds the GIL for in-memory encodes). Content-addressed targets that exist are skipped
   (``encode.py``).
6. dHash/pHash from the <= 256 px step (``hashes.py``, ``HASH_SIZE``), then the original is
   kept.

Errors: per-item failures raise ``ItemError`` with NOT_IMAGE, TRUNCATED, DECODE_ERROR or
TOO_MANY_PIXELS; ``StorageError`` from the store passes through; anything else is a bug
and propagates (the worker records it as INTERNAL).
"""

from __future__ import annotations

import hashlib
import time

from PIL import Image

from pipeline.config import ProcessOptions
from pipeline.errors import ErrorClass, ItemError
from pipeline.image.colour import _srgb_transform
from pipeline.image.decode import _decode, _Decoded, _open
from pipeline.image.encode import _write_thumbnail
from pipeline.image.fit import _hash_plan, _plan, _Rect
from pipeline.image.formats import _original_ext
from pipeline.image.hashes import dhash, phash
from pipeline.image.orientation import _SWAPS_AXES, _orientation
from pipeline.image.pixellimit import _allow_pillow_limit
from pipeline.image.resize import _flatten_on_white, _pad, _take
from pipeline.models import ImageInfo, Thumbnail
from pipeline.store.base import ContentStore


def process_image(data: bytes, *, options: ProcessOptions, store: ContentStore) -> ImageInfo:
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


def _keep_original(data: bytes, sha: str, fmt: str, *, options: ProcessOptions, store: ContentStore) -> str | None:
    if not options.keep_originals:
        return None
    path = store.original_relpath(sha, _original_ext(fmt))
    store.write_bytes(path, data)
    return path


def _keep_original_only(data: bytes, sha: str, started: float, *, options: ProcessOptions, store: ContentStore) -> ImageInfo:
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


def _make_thumbnails(
    decoded: _Decoded, sha: str, *, options: ProcessOptions, store: ContentStore
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
