"""Records that flow between stages: manifest row → shard → item result → shard report.

All of them are plain, picklable dataclasses: they cross into worker processes (or a
cluster engine) as they are. None of them ever carries image bytes across a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pipeline.errors import ErrorClass


class Status(str, Enum):
    """Coarse outcome of one manifest row; the fine reason is its ``ErrorClass``."""

    OK = "ok"
    FAILED = "failed"
    INVALID = "invalid"  # the manifest row itself is unusable; nothing was fetched
    OPTED_OUT = "opted_out"  # the server asked not to be used for AI (X-Robots-Tag)


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One data row of the manifest.

    ``row`` is the 0-based index among data rows (the catalog's primary key, stable for a
    given manifest); ``line`` is the 1-based physical line, for error messages.
    ``source`` is what to fetch: an http(s) URL, or an absolute local path already checked
    to lie under the local root. ``invalid`` holds the reason when the row is unusable.
    """

    row: int
    line: int
    key: str
    url: str
    source: str = ""
    extra: tuple[tuple[str, str], ...] = ()
    invalid: str | None = None
    # Under --layout mirror/key: the thumbnail's name below its variant folder, without the
    # extension (``2019/beach``, ``2019/beach~2``); chosen by the parent (layout.py). None:
    # content-addressed.
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Shard:
    """A contiguous run of manifest rows; ``shard_id == rows[0].row // shard_size``."""

    shard_id: int
    rows: tuple[ManifestRow, ...]


@dataclass(frozen=True, slots=True)
class Thumbnail:
    size: int | str  # as requested: a longest side (256) or a box ("512x384")
    width: int
    height: int
    path: str  # relative to OUT, content-addressed


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What the fetch stage learned about one URL. ``body`` stays inside the worker."""

    final_url: str
    http_status: int | None
    attempts: int
    redirects: int
    mime: str | None
    body: bytes | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the process stage learned about one image (metadata only)."""

    sha256: str
    bytes: int
    format: str
    mode: str
    width: int  # after EXIF orientation, i.e. as displayed
    height: int
    n_frames: int
    dhash: str | None  # 64-bit, 16 hex digits; None when thumbnails=False (nothing decoded)
    phash: str | None
    thumbnails: tuple[Thumbnail, ...]
    original_path: str | None
    elapsed_ms: float


@dataclass(slots=True)
class ItemResult:
    """One catalog row: everything known about one manifest row after its shard ran."""

    row: int
    key: str
    url: str
    status: Status
    error_class: ErrorClass | None = None
    error_message: str | None = None
    final_url: str | None = None
    http_status: int | None = None
    attempts: int = 0
    redirects: int = 0
    mime: str | None = None
    image: ImageInfo | None = None
    fetch_ms: float = 0.0
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ShardReport:
    """What a worker returns for one shard: metadata for every row, in row order."""

    shard_id: int
    items: list[ItemResult] = field(default_factory=list)
    fetched: int = 0  # network or disk reads actually made (repeats within a shard are not)
    bytes_downloaded: int = 0
    elapsed_s: float = 0.0
    worker_pid: int = 0


@dataclass(frozen=True, slots=True)
class ShardDone:
    """A shard whose every row is in the catalog, with what running it cost (table ``shards``)."""

    shard_id: int
    fetched: int = 0
    bytes_downloaded: int = 0
    elapsed_s: float = 0.0
    worker_pid: int | None = None  # the process that finished its last row
