"""Typed exceptions and the fixed per-item error classes.

Two kinds of failure live here and they never mix:

* Per-item failures (a 404, a truncated JPEG, a bad manifest row) are *data*: each stage
  turns them into an ``ErrorClass`` plus a message at its own edge, and the item's record
  carries them to the catalog. They never raise out of a shard.
* Run-level failures raise one of the exceptions below and stop the command::

    PipelineError
    ├── UsageError              bad options or arguments (exit 2)
    │   ├── ManifestError       manifest missing, unreadable or of an unknown format
    │   └── ResumeRefused       OUT holds a run of another manifest or other options
    ├── CatalogError            the SQLite catalog is unusable (corrupt, newer schema)
    ├── StorageError            OUT cannot be written (disk full, read-only, permissions)
    ├── DedupError              nothing to deduplicate, or thumbnails to check are missing
    ├── ManifestTruncated       the manifest cannot be read past line N (a cut .gz): raised
    │                           after the rows before the cut are committed (exit 1)
    └── ItemError               one item failed; caught at the stage edge, never escapes a shard
        └── carries an ErrorClass

Every class passes all its arguments to ``super().__init__`` so it pickles across process
boundaries unchanged (see ``tests/test_errors.py``).
"""

from __future__ import annotations

from enum import Enum


class ErrorClass(str, Enum):
    """Why one item failed. The names are fixed: they appear in status and export."""

    INVALID = "invalid"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    REDIRECT = "redirect"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    NOT_IMAGE = "not_image"
    DECODE_ERROR = "decode_error"
    TOO_MANY_PIXELS = "too_many_pixels"
    OPTED_OUT = "opted_out"
    BLOCKED = "blocked"
    INTERNAL = "internal"


class PipelineError(Exception):
    """Base of every error the library raises on purpose."""


class UsageError(PipelineError):
    """The caller asked for something that cannot be done as asked."""


class ManifestError(UsageError):
    """The manifest as a whole cannot be read (a single bad row is an item error instead)."""


class ResumeRefused(UsageError):
    """OUT already holds a run whose fingerprint differs from this one."""

    def __init__(self, message: str, differences: tuple[str, ...] = ()) -> None:
        super().__init__(message, differences)
        self.message = message
        self.differences = differences

    def __str__(self) -> str:
        if not self.differences:
            return self.message
        return f"{self.message} (differs: {', '.join(self.differences)})"


class CatalogError(PipelineError):
    """The catalog file exists but cannot be used."""


class StorageError(PipelineError):
    """OUT cannot be written: fatal for the run, because every later item would fail too."""


class DedupError(PipelineError):
    """``pipeline dedup`` cannot group this run: no processed images, or missing thumbnails."""


class ManifestTruncated(PipelineError):
    """The manifest stops being readable after ``line`` (a truncated or damaged compressed
    stream, a damaged Parquet file). The reader raises it at the cut; ``run`` processes and
    commits the rows before it, then raises it, so a rerun resumes and stops at the same place.
    Not a ``UsageError``: the command was right, the file is damaged (exit 1, not 2)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message, line)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return self.message


class ItemError(PipelineError):
    """One item failed. Raised inside a stage and turned into data at that stage's edge."""

    def __init__(self, error_class: ErrorClass, message: str, http_status: int | None = None) -> None:
        super().__init__(error_class, message, http_status)
        self.error_class = ErrorClass(error_class)
        self.message = message
        self.http_status = http_status

    def __str__(self) -> str:
        return f"{self.error_class.value}: {self.message}"
