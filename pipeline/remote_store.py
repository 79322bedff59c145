"""The content-addressed store on an object store or any fsspec filesystem (s3://, gs://, memory://).

The only module that imports fsspec, and only when OUT is a URL: the core install stays
small (``pip install 'pipeline[s3]'`` brings fsspec and s3fs).

Same names and interface as ``Store``; what differs is how a write becomes visible.
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
  (``memfd_create``; Pillow releases the GIL only when it encodes to a real file, see
  ``image/encode.py``), which disappears with its process, even one killed with SIGKILL. Where
  there is no memfd (not Linux), a temp file in the OS temp folder, removed after reading.

Credentials and endpoints come from the usual places of each filesystem (for S3: the
``AWS_*`` environment variables, ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` for an
S3-compatible server), so nothing secret travels in the run's config.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pipeline.errors import StorageError, UsageError
from pipeline.store import TMP_DIR, Store

# In flight per store (one store per worker process): enough to hide a 20-100 ms round trip
# at hundreds of objects per second; bytes bound the memory held by uploads (thumbnails are
# a few KB, originals up to --max-bytes; one object larger than the bound still goes alone).
MAX_UPLOADS = 64
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# Threads for filesystems without an event loop of their own (memory://, local paths).
SYNC_UPLOAD_THREADS = 8
# Keys this process has uploaded, remembered so that rows sharing an image skip its encode.
KNOWN_KEYS = 4096


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
        self._fs, base = _filesystem(self.url)
        self._base = base.rstrip("/")
        self.max_uploads = max(1, max_uploads)
        self.max_upload_bytes = max(1, max_upload_bytes)
        self._changed = threading.Condition()
        self._in_flight = [0, 0]  # objects, bytes
        self._failed: StorageError | None = None
        self._known: OrderedDict[str, Future[None]] = OrderedDict()  # key -> its upload
        self._local = threading.local()  # .pending: this thread's uploads since uploads()
        self._threads: ThreadPoolExecutor | None = None
        # Root stays a Path so inherited helpers keep their types; nothing is written there.
        super().__init__(Path(tempfile.gettempdir()))

    def path(self, rel: str) -> Path:
        raise TypeError("an object store has no local paths")

    def _rel(self, rel: str) -> str:
        pure = PurePosixPath(rel)
        if pure.is_absolute() or not pure.parts or ".." in pure.parts or pure.parts[0] == TMP_DIR:
            raise ValueError(f"not a store path: {rel!r}")
        return pure.as_posix()

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
        with _scratch_file(PurePosixPath(rel).suffix) as (tmp, read):
            yield tmp
            data = read()
        self._upload(key, data)

    @contextmanager
    def atomic_paths(self, rels: list[str]) -> Iterator[Path]:
        """``atomic_path`` for several names of the same bytes (``--layout mirror|key``, rows
        sharing a source): encoded once, uploaded under each name."""
        keys = [self._key(rel) for rel in rels]
        with _scratch_file(PurePosixPath(rels[0]).suffix) as (tmp, read):
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


@contextmanager
def _scratch_file(suffix: str) -> Iterator[tuple[Path, Callable[[], bytes]]]:
    """A local file to encode into and a function that reads it back; gone afterwards.

    An anonymous memory file where the OS has one: nothing is left on disk by a killed
    process. Pillow opens the yielded path itself (``/proc/self/fd/N``, the same file).
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("pipeline-thumb", os.MFD_CLOEXEC)
        try:
            yield Path(f"/proc/self/fd/{fd}"), lambda: _read_all(fd)
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(prefix="pipeline-", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp, tmp.read_bytes
    finally:
        tmp.unlink(missing_ok=True)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


# -- reading back (``pipeline dedup`` of a run whose OUT is a URL) -----------------------------

READS_AT_ONCE = 64  # objects asked for together; their bytes are held until written locally


def copy_objects(url: str, rels: list[str], dest: Path) -> list[str]:
    """Download the objects ``rels`` (paths relative to the store ``url``, as the catalog lists
    them) to the same relative paths under the local folder ``dest``; return those missing.

    One GET per object, ``READS_AT_ONCE`` at a time: on the filesystem's own event loop for
    s3fs/gcsfs, on a few threads otherwise. A missing object is skipped (its reader says
    which); any other failure (no bucket, wrong keys, access denied) is ``StorageError``.
    """
    fs, base = _filesystem(url.rstrip("/"))
    base = base.rstrip("/")
    safe = sorted({r for r in rels if _is_relative(r)})
    missing = [r for r in rels if not _is_relative(r)]
    for start in range(0, len(safe), READS_AT_ONCE):
        chunk = safe[start : start + READS_AT_ONCE]
        keys = [f"{base}/{rel}" for rel in chunk]
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import sync

            got = sync(fs.loop, _cat_all, fs, keys)
        else:
            with ThreadPoolExecutor(SYNC_UPLOAD_THREADS, thread_name_prefix="pipeline-read") as pool:
                got = list(pool.map(lambda key: _cat_or_error(fs, key), keys))
        for rel, data in zip(chunk, got):
            if isinstance(data, FileNotFoundError):
                missing.append(rel)
            elif isinstance(data, BaseException):
                raise StorageError(f"cannot read from {url}: {type(data).__name__}: {data}") from data
            else:
                path = dest / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return missing


async def _cat_all(fs, keys: list[str]) -> list[bytes | BaseException]:  # type: ignore[no-untyped-def]
    # s3fs asks for an object's size (a HEAD) before each whole read, to split large ones into
    # ranges; thumbnails are small: one GET each.
    whole = {"max_concurrency": 1} if "max_concurrency" in inspect.signature(fs._cat_file).parameters else {}
    return await asyncio.gather(*(fs._cat_file(key, **whole) for key in keys), return_exceptions=True)


def _cat_or_error(fs, key: str) -> bytes | BaseException:  # type: ignore[no-untyped-def]
    try:
        return fs.cat_file(key)
    except Exception as exc:  # noqa: BLE001  (reported per object by the caller, as gather does)
        return exc


def _is_relative(rel: str) -> bool:
    pure = PurePosixPath(rel)
    return bool(pure.parts) and not pure.is_absolute() and ".." not in pure.parts


# -- whole objects (dataset shards, pipeline/dataset.py) ----------------------------------------


class ObjectFolder:
    """A folder of whole objects under ``url``, written by the parent: dataset shards and their
    ``_stats.json``. ``put`` uploads a finished local file as one object (one PUT; above s3fs's
    part size a multipart upload, which appears only at its completion), so a reader never
    sees part of a shard."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._fs, base = _filesystem(self.url)
        self._base = base.rstrip("/")

    def put(self, local: Path, name: str) -> None:
        self._call("write", self._fs.put_file, str(local), f"{self._base}/{name}")

    def put_bytes(self, data: bytes, name: str) -> None:
        self._call("write", self._fs.pipe_file, f"{self._base}/{name}", data)

    def names(self) -> list[str]:
        """Names directly under the folder (none if it does not exist yet)."""
        try:
            self._fs.invalidate_cache(self._base)
            listed = self._fs.ls(self._base, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # botocore's errors are not all OSError
            raise StorageError(f"cannot list {self.url}: {type(exc).__name__}: {exc}") from exc
        return [PurePosixPath(p).name for p in listed]

    def remove(self, name: str) -> None:
        try:
            self._fs.rm_file(f"{self._base}/{name}")
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(f"cannot remove {self.url}/{name}: {type(exc).__name__}: {exc}") from exc

    def _call(self, what: str, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception as exc:
            raise StorageError(f"cannot {what} to {self.url}: {type(exc).__name__}: {exc}") from exc
