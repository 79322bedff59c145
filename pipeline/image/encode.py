"""Encoding a thumbnail straight into a store temp file, unless its content-addressed file exists."""

from __future__ import annotations

from PIL import Image

from pipeline.config import ProcessOptions
from pipeline.image.colour import _icc_for
from pipeline.image.decode import _Decoded
from pipeline.image.resize import _flatten_on_white
from pipeline.models import Thumbnail
from pipeline.store.base import ContentStore

_SAVE_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "avif": "AVIF"}


def _write_thumbnail(
    im: Image.Image, size: int | str, sha: str, decoded: _Decoded, *, options: ProcessOptions, store: ContentStore
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
