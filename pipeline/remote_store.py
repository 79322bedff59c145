"""The content-addressed store on an object store or any fsspec filesystem (s3://, gs://, memory://).

The only module that imports fsspec, and only when OUT is a URL: the core install stays
small (``pip install 'pipeline[s3]'`` brings fsspec and s3fs).

Same names and interface as ``Store``; what differs is how a write becomes visible.
Objects on S3 or GCS appear whole when the upload completes, so no temp name and rename
are needed: a killed worker leaves no partial object under a final name. Thumbnails are
still encoded into a local temp file first (Pillow releases the GIL only when it encodes to
a real file, see ``process.py``), then uploaded with ``put_file``. Every upload of a shard
has returned before ``run_shard`` does, so a shard's files are complete before the driver
commits its done-mark.

Credentials and endpoints come from the usual places of each filesystem (for S3: the
``AWS_*`` environment variables, ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` for an
S3-compatible server), so nothing secret travels in the run's config.

Errors: an ``OSError`` from a write (missing bucket, access denied, an upload that failed
after s3fs's own retries) becomes ``StorageError``, fatal for the run like a full disk;
rerunning the same command resumes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pipeline.errors import StorageError, UsageError
from pipeline.store import TMP_DIR, Store


def _filesystem(url: str):  # type: ignore[no-untyped-def]
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"--out {url} needs fsspec: pip install 'pipeline[s3]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # e.g. s3fs or gcsfs missing for that protocol
        raise UsageError(f"--out {url}: {exc}") from None
    except ValueError as exc:  # unknown protocol
        raise UsageError(f"--out {url}: {exc}") from None


class FsspecStore(Store):
    """Content-addressed objects under the fsspec URL ``url``. Cheap to construct:
    fsspec caches one filesystem instance per protocol and options in each process."""

    __slots__ = ("_base", "_fs", "url")

    def __init__(self, url: str, *, fsync: bool = False) -> None:
        self.url = url.rstrip("/")
        self._fs, base = _filesystem(self.url)
        self._base = base.rstrip("/")
        # Local scratch for encodes; root stays a Path so inherited helpers keep their types.
        super().__init__(Path(tempfile.gettempdir()), fsync=fsync)

    def path(self, rel: str) -> Path:
        raise TypeError("an object store has no local paths; use url_of(rel)")

    def url_of(self, rel: str) -> str:
        """The full URL of a store-made relative path (refuses anything escaping OUT)."""
        return f"{self.url}/{self._rel(rel)}"

    def _rel(self, rel: str) -> str:
        pure = PurePosixPath(rel)
        if pure.is_absolute() or not pure.parts or ".." in pure.parts or pure.parts[0] == TMP_DIR:
            raise ValueError(f"not a store path: {rel!r}")
        return pure.as_posix()

    def _key(self, rel: str) -> str:
        return f"{self._base}/{self._rel(rel)}"

    def exists(self, rel: str) -> bool:
        return bool(self._fs.exists(self._key(rel)))

    def write_bytes(self, rel: str, data: bytes) -> None:
        key = self._key(rel)
        if self._fs.exists(key):
            return
        with self._translate_remote():
            self._fs.pipe_file(key, data)

    @contextmanager
    def atomic_path(self, rel: str) -> Iterator[Path]:
        """Yield a local temp file to write; on success it is uploaded to ``rel``, then removed."""
        key = self._key(rel)
        fd, name = tempfile.mkstemp(prefix="pipeline-", suffix=PurePosixPath(rel).suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            with self._translate_remote():
                self._fs.put_file(str(tmp), key)
        finally:
            tmp.unlink(missing_ok=True)

    def clear_temp(self) -> int:
        # Nothing to clear remotely (no temp objects); local temp files are removed as
        # soon as they are uploaded, and a killed worker's leftovers sit in the OS temp dir.
        return 0

    @contextmanager
    def _translate_remote(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StorageError(f"cannot write to {self.url}: {type(exc).__name__}: {exc}") from exc
