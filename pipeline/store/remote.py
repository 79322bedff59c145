"""The content-addressed store on an object store or any fsspec filesystem (s3://, gs://, memory://).

fsspec is imported (by ``fs.py``) only when OUT is a URL: the core install stays small
(``pip install 'pipeline[s3]'`` brings fsspec and s3fs).

Same names and interface as the local ``Store`` (``base.ContentStore``); what differs is how a write becomes visible.
Objects on S3 or GCS appear whole when the upload completes, so no temp name and rename
are needed: a killed worker leaves no partial object under a final name.

Uploads run off the image thread (issue 11). An object store answers each request in tens
of milliseconds; an existence check and an upload per object, one after the other on the
image thread, held a worker at a few images per second. So:

- **No existence checks.** A name is a content hash, so rewriting an object rewrites the
  same bytes: harmless. ``exists`` answers from what this process has uploaded (no
  request), which spares re-encoding an image that two rows share.
- **Uploads in the background, bounded.** ``write_bytes`` and ``atomic_path`` hand the bytes
  to the filesystem's own event loop (s3fs and gcsfs are asyncio-based; other filesystems
  get a few threads) and return; at most ``max_uploads`` objects and ``max_upload_bytes``
  bytes are in flight per store, and the image thread waits at a write when either is
  reached, so memory stays bounded however slow the store.
- **A row waits for its own objects, not the image thread.** ``uploads()``, called on the
  thread that processed an image, gives a future of that image's uploads; the worker awaits
  it on its event loop and reports the row only then (``worker/rows._one``). So a row committed
  in the catalog has its objects in place, and the image thread has moved on meanwhile.
- **Errors stop the run.** Any failed upload (missing bucket, wrong keys, access denied, a
  failure after s3fs's own retries) becomes ``StorageError``: raised by the row's future,
  and by every later write of the process, fatal for the run like a full disk. Rerunning the
  same command resumes.
- **Nothing in $TMPDIR.** Thumbnails are encoded into an anonymous in-memory file
  (``memfd_create``, ``scratch.py``; Pillow releases the GIL only when it encodes to a real
  file, see ``image/encode.py``), which disappears with its process, even one killed with
  SIGKILL. Where there is no memfd (not Linux), a temp file in the OS temp folder, removed
  after reading.

Credentials and endpoints come from the usual places of each filesystem (for S3: the
``AWS_*`` environment variables, ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` for an
S3-compatible server), so nothing secret travels in the run's config.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pipeline.errors import StorageError
from pipeline.store.base import ContentStore, store_parts
from pipeline.store.fs import SYNC_THREADS, filesystem
from pipeline.store.scratch import scratch_file

# In flight per store (one store per worker process): enough to hide a 20-100 ms round trip
# at hundreds of objects per second; bytes bound the memory held by uploads (thumbnails are
# a few KB, originals up to --max-bytes; one object larger than the bound still goes alone).
MAX_UPLOADS = 64
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
SYNC_UPLOAD_THREADS = SYNC_THREADS
# Keys this process has uploaded, remembered so that rows sharing an image skip its encode.
KNOWN_KEYS = 4096


class FsspecStore(ContentStore):
    """Content-addressed objects under the fsspec URL ``url``. Cheap to construct (fsspec
    caches one filesystem instance per protocol and options in each process); create one per
    process, since it holds that process's uploads in flight."""

    __slots__ = (
        "_base",
        "_changed",
        "_failed",
        "_fs",
        "_in_flight",
        "_known",
        "_local",
        "_threads",
        "max_upload_bytes",
        "max_uploads",
        "url",
    )  # fmt: skip

    def __init__(
        self,
        url: str,
        *,
        max_uploads: int = MAX_UPLOADS,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ) -> None:
        self.url = url.rstrip("/")
        self._fs, base = filesystem(self.url)
        self._base = base.rstrip("/")
        self.max_uploads = max(1, max_uploads)
        self.max_upload_bytes = max(1, max_upload_bytes)
        self._changed = threading.Condition()
        self._in_flight = [0, 0]  # objects, bytes
        self._failed: StorageError | None = None
        self._known: OrderedDict[str, Future[None]] = OrderedDict()  # key -> its upload
        self._local = threading.local()  # .pending: this thread's uploads since uploads()
        self._threads: ThreadPoolExecutor | None = None

    def _rel(self, rel: str) -> str:
        return "/".join(store_parts(rel))

    def _key(self, rel: str) -> str:
        return f"{self._base}/{self._rel(rel)}"

    # -- the Store interface -------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        """Whether this process has uploaded ``rel`` (or is uploading it): no request is made.

        A caller that skips writing ``rel`` because of a pending upload also waits for that
        upload in its ``uploads()``.
        """
        key = self._key(rel)
        with self._changed:
            upload = self._known.get(key)
        if upload is None:
            return False
        if not upload.done() or upload.exception() is not None:
            self._pending().append(upload)
        return True

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Upload ``data`` to ``rel`` in the background (see ``uploads``), unless this process
        already did (a rewrite would be harmless, only wasted)."""
        if not self.exists(rel):
            self._upload(self._key(rel), data)

    @contextmanager
    def atomic_path(self, rel: str) -> Iterator[Path]:
        """Yield a temp file to write; on success its bytes are uploaded to ``rel`` in the
        background (see ``uploads``). The file has no suffix: pass the format explicitly."""
        key = self._key(rel)
        with scratch_file(PurePosixPath(rel).suffix) as (tmp, read):
            yield tmp
            data = read()
        self._upload(key, data)

    @contextmanager
    def atomic_paths(self, rels: list[str]) -> Iterator[Path]:
        """``atomic_path`` for several names of the same bytes (``--layout mirror|key``, rows
        sharing a source): encoded once, uploaded under each name."""
        keys = [self._key(rel) for rel in rels]
        with scratch_file(PurePosixPath(rels[0]).suffix) as (tmp, read):
            yield tmp
            data = read()
        for key in keys:
            self._upload(key, data)

    def uploads(self) -> Future[None] | None:
        """A future of the uploads this thread started (or waits on) since its last call, done
        when all of them are in place (``StorageError`` if one failed); None if there are none.
        Call it on the thread that wrote an image, after writing it."""
        pending, self._local.pending = self._pending(), []
        pending = [f for f in pending if not f.done() or f.exception() is not None]
        if not pending:
            return None
        return _all_of(pending)

    def flush(self) -> None:
        """Wait until every upload started so far is done; raise ``StorageError`` if one failed."""
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight[0] == 0)
            if self._failed is not None:
                raise self._failed

    def clear_temp(self) -> int:
        # No temp objects remotely, and nothing on disk locally (thumbnails are encoded into
        # memory files that vanish with their process).
        return 0

    # -- uploads -------------------------------------------------------------------------

    def _pending(self) -> list[Future[None]]:
        pending = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def _upload(self, key: str, data: bytes) -> None:
        size = len(data)
        with self._changed:
            # The bounds; one object larger than the byte bound goes when nothing else is in flight.
            self._changed.wait_for(
                lambda: (
                    self._failed is not None
                    or self._in_flight[0] == 0
                    or (
                        self._in_flight[0] < self.max_uploads
                        and self._in_flight[1] + size <= self.max_upload_bytes
                    )
                )
            )
            if self._failed is not None:
                raise self._failed
            self._in_flight[0] += 1
            self._in_flight[1] += size
            done: Future[None] = _running_future()
            self._known[key] = done
            self._known.move_to_end(key)
            if len(self._known) > KNOWN_KEYS:
                self._known.popitem(last=False)  # forgetting one costs at most a rewrite
        self._pending().append(done)
        try:
            if getattr(self._fs, "async_impl", False):
                started = asyncio.run_coroutine_threadsafe(self._fs._pipe_file(key, data), self._fs.loop)
            else:
                started = self._sync_threads().submit(self._fs.pipe_file, key, data)
        except BaseException as exc:
            self._finished(done, size, exc)
            raise
        started.add_done_callback(lambda f: self._finished(done, size, _exception_of(f)))

    def _finished(self, done: Future[None], size: int, exc: BaseException | None) -> None:
        error = None if exc is None else self._storage_error(exc)
        with self._changed:
            self._in_flight[0] -= 1
            self._in_flight[1] -= size
            if error is not None and self._failed is None:
                self._failed = error
            self._changed.notify_all()
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def _storage_error(self, exc: BaseException) -> StorageError:
        # Any failure of an upload is the store's (an image's problems end before it), and
        # botocore's errors are not all OSError (NoCredentialsError, EndpointConnectionError).
        if isinstance(exc, StorageError):
            return exc
        error = StorageError(f"cannot write to {self.url}: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def _sync_threads(self) -> ThreadPoolExecutor:
        with self._changed:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(SYNC_UPLOAD_THREADS, thread_name_prefix="pipeline-upload")
            return self._threads


def _running_future() -> Future[None]:
    # Running: a waiter's cancel() (asyncio.wrap_future chains cancellation) cannot cancel it.
    future: Future[None] = Future()
    future.set_running_or_notify_cancel()
    return future


def _exception_of(future: concurrent.futures.Future[object]) -> BaseException | None:
    if future.cancelled():
        return concurrent.futures.CancelledError()
    return future.exception()


def _all_of(futures: list[Future[None]]) -> Future[None]:
    """A future done when every one of ``futures`` is; with the first error among them."""
    combined = _running_future()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(future: Future[None]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                combined.set_exception(errors[0])
            else:
                combined.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    return combined
