"""The machine-wide per-host table in shared memory: its layout, its rows, and taking and giving back slots.

Table layout (one ``multiprocessing.shared_memory`` block, native byte order)::

    header   magic, buckets, rows                         16 bytes
    owners   int32[rows]              pid of the worker holding each row; 0: free
    starts   float64[buckets]         earliest start of the host's next request (time.monotonic)
    counts   int32[buckets × rows]    requests in flight, per bucket, one cell per row
    waiting  float64[buckets × rows]  since when the row's first waiter for the bucket waits; 0: none
    queued   int32[buckets]           rows with a waiter for the bucket (so that the common
                                      case, nobody waiting, never scans ``waiting``)

* Hosts (``host:port``, as aiohttp's own per-host limit counts them) are hashed into
  ``BUCKETS`` buckets. Two hosts in one bucket share one limit, which is only conservative;
  with H hosts in flight at once, a given host shares its bucket with probability ~H/16384
  (0.6% at 100 hosts, 6% at 1,000), for 192 KB per row.
* A worker writes only its own row, so the parent can zero the row of a dead worker
  (``reclaim``) and a killed worker never leaks slots. There are ``workers + 2`` rows, and a
  worker attaching takes over a dead worker's row if it finds one.
* Check-and-take runs under ``flock`` on a file, which the kernel releases when its holder
  dies: a worker SIGKILLed inside the critical section cannot wedge the others, as a
  ``multiprocessing.Lock`` would. Giving a slot back writes only the process's own cell, so
  it takes no lock (another process reading a stale count only waits a little longer).
* Rate cap: GCRA with a burst of one request, i.e. the starts of one host's requests are at
  least ``1 / rate`` apart, machine-wide. Not a burst of ``rate``: nginx's ``limit_req``
  without ``burst`` (its default) refuses requests closer together than ``1 / rate`` with a
  503, and the long-run rate is the same either way. A slot's start time is reserved when it
  is taken, and the request sleeps exactly until then.
* Fair across processes: a free slot goes to the process whose first waiter has waited
  longest (``waiting``), and within a process to its first waiter. Without this, a process
  that holds a busy host's slots takes each one back at once (its own waiters wake first)
  and another process's requests to that host starve, holding its shards open for good.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from multiprocessing import shared_memory

from pipeline.errors import PipelineError

try:
    import fcntl
except ImportError:  # Windows: no flock; limits stay per process there (see ``supported``)
    fcntl = None  # type: ignore[assignment]

__all__ = ["BUCKETS", "HostLimitError", "HostTable", "TableHandle", "supported"]

BUCKETS = 16384
_MAGIC = 0x31_4C_48_70  # "pHL1"
_HEADER = struct.Struct("=III4x")
_INT, _FLOAT = 4, 8


class HostLimitError(PipelineError):
    """The shared host table cannot be created or attached."""


@dataclass(frozen=True, slots=True)
class TableHandle:
    """What a worker needs to attach the table: picklable, passed through the pool initializer."""

    shm_name: str
    lock_path: str
    buckets: int
    rows: int


def supported() -> bool:
    """Whether this platform has what the shared table needs (flock)."""
    return fcntl is not None


@dataclass(frozen=True, slots=True)
class _Layout:
    owners: int
    starts: int
    counts: int
    waiting: int
    queued: int
    size: int

    @classmethod
    def of(cls, buckets: int, rows: int) -> _Layout:
        owners = _HEADER.size
        starts = (owners + _INT * rows + _FLOAT - 1) // _FLOAT * _FLOAT  # float64s 8-aligned
        counts = starts + _FLOAT * buckets
        waiting = counts + (_INT * buckets * rows + _FLOAT - 1) // _FLOAT * _FLOAT
        queued = waiting + _FLOAT * buckets * rows
        return cls(owners, starts, counts, waiting, queued, queued + _INT * buckets)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the pid was reused by another user's process: not ours to judge
    return True


class _Lock:
    """``flock`` on a file (the kernel drops it when the holding process dies), plus a thread
    lock: flock locks belong to an open file, so two threads of one process would both get
    in. Without a file (a private table), the thread lock alone."""

    __slots__ = ("fd", "threads")

    def __init__(self, path: str | None) -> None:
        self.fd = os.open(path, os.O_RDWR) if path is not None else -1
        self.threads = threading.Lock()

    def __enter__(self) -> None:
        self.threads.acquire()
        if self.fd >= 0:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except BaseException:
                self.threads.release()
                raise

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.threads.release()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HostTable:
    """The table: ``create`` in the parent, ``attach`` in each worker, ``private`` without one."""

    def __init__(
        self,
        buffer: memoryview,
        lock: _Lock,
        buckets: int,
        rows: int,
        *,
        shm: shared_memory.SharedMemory | None = None,
        handle: TableHandle | None = None,
    ) -> None:
        self.buckets = buckets
        self.rows = rows
        self.row = -1  # this process's row, once claimed
        self.handle = handle
        self._lock = lock
        self._shm = shm
        self._mask = buckets - 1
        at = _Layout.of(buckets, rows)
        self._views = [
            buffer[at.owners : at.owners + _INT * rows].cast("i"),
            buffer[at.starts : at.counts].cast("d"),
            buffer[at.counts : at.counts + _INT * buckets * rows].cast("i"),
            buffer[at.waiting : at.queued].cast("d"),
            buffer[at.queued : at.size].cast("i"),
        ]
        self._owners, self._starts, self._counts, self._waiting, self._queued = self._views
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def create(cls, workers: int, buckets: int = BUCKETS) -> HostTable:
        """A new table for ``workers`` processes (parent side); ``destroy`` it when the run ends."""
        if not supported():
            raise HostLimitError("a machine-wide host table needs flock (not available here)")
        if buckets < 1 or buckets & (buckets - 1):
            raise HostLimitError(f"buckets must be a power of two, not {buckets}")
        rows = max(1, workers) + 2
        try:
            shm = shared_memory.SharedMemory(create=True, size=_Layout.of(buckets, rows).size)
        except OSError as exc:
            raise HostLimitError(f"cannot create the shared host table: {exc.strerror or exc}") from exc
        _HEADER.pack_into(shm.buf, 0, _MAGIC, buckets, rows)
        lock_path = _lock_path_for(shm.name)
        handle = TableHandle(shm.name, lock_path, buckets, rows)
        return cls(shm.buf, _Lock(lock_path), buckets, rows, shm=shm, handle=handle)

    @classmethod
    def attach(cls, handle: TableHandle) -> HostTable:
        """The parent's table, in a worker: claims a row for this process."""
        try:
            shm = shared_memory.SharedMemory(name=handle.shm_name)
            lock = _Lock(handle.lock_path)
        except OSError as exc:
            raise HostLimitError(f"cannot attach the shared host table: {exc.strerror or exc}") from exc
        if _HEADER.unpack_from(shm.buf, 0) != (_MAGIC, handle.buckets, handle.rows):
            raise HostLimitError(f"shared memory {handle.shm_name} is not a host table of this shape")
        table = cls(shm.buf, lock, handle.buckets, handle.rows, shm=shm, handle=handle)
        table._claim_row()
        return table

    @classmethod
    def private(cls, buckets: int = 1024) -> HostTable:
        """A table in this process's memory: per-process limits where no shared table exists."""
        buffer = memoryview(bytearray(_Layout.of(buckets, 1).size))
        table = cls(buffer, _Lock(None), buckets, 1)
        table.row = 0
        return table

    def close(self) -> None:
        """Detach (the segment lives on until the parent destroys it); idempotent."""
        if self._closed:
            return
        self._closed = True
        for view in self._views:
            view.release()
        self._lock.close()
        if self._shm is not None:
            self._shm.close()

    def destroy(self) -> None:
        """Parent: detach and remove the segment and its lock file."""
        self.close()
        if self._shm is not None:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
        if self.handle is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.handle.lock_path)  # already gone when it was the segment itself

    # -- rows ------------------------------------------------------------------------------

    def _claim_row(self) -> None:
        me = os.getpid()
        with self._lock:
            for row in range(self.rows):
                owner = self._owners[row]
                # Our own pid in a row: its former owner died and the pid was reused.
                if owner in (0, me) or not _alive(owner):
                    if owner:  # a free row is clean already
                        self._free_row(row)
                    self._owners[row] = me
                    self.row = row
                    return
        raise HostLimitError(f"all {self.rows} rows of the host table belong to live processes")

    def reclaim(self) -> list[int]:
        """Zero the rows of processes that are gone (parent, before it starts new workers);
        return their pids. A killed worker's requests ended with it, and so do its slots."""
        freed = []
        with self._lock:
            for row in range(self.rows):
                owner = self._owners[row]
                if owner and not _alive(owner):
                    self._free_row(row)
                    freed.append(owner)
        return freed

    def _free_row(self, row: int) -> None:
        """Under the lock: a row as new (rare: a worker died)."""
        for bucket, since in enumerate(self._waiting[row :: self.rows]):
            if since:
                self._queued[bucket] -= 1
        self._counts[row :: self.rows] = memoryview(bytes(_INT * self.buckets)).cast("i")
        self._waiting[row :: self.rows] = memoryview(bytes(_FLOAT * self.buckets)).cast("d")
        self._owners[row] = 0

    # -- slots -----------------------------------------------------------------------------

    def bucket(self, host: str | None, port: int | None) -> int:
        # crc32, not hash(): str hashes differ from process to process.
        return zlib.crc32(f"{host}:{port}".encode()) & self._mask

    def take(
        self, bucket: int, limit: int, interval: float, waiting_since: float | None = None
    ) -> tuple[float | None, int]:
        """Take a slot of ``bucket``, fairly; return (its start time, slots still free).

        The start time (``time.monotonic()``; 0.0: at once) is reserved under the rate cap of
        ``interval`` seconds between starts (0: no cap). None: no slot, nothing taken.
        ``waiting_since``: when this process's first waiter for the bucket began to wait,
        or None for a request that has not waited, which takes only a slot that can start
        at once. Processes that have waited longer go first; a waiter that fails is
        recorded, so that a release elsewhere wakes this process.
        """
        if self.row < 0:
            raise HostLimitError("this process has no row of the host table: attach it first")
        rows = self.rows
        base = bucket * rows
        mine = base + self.row
        counts = self._counts
        # `with self._lock`, inlined: this runs for every request (bench/fetch_overhead.py).
        threads, fd = self._lock.threads, self._lock.fd
        threads.acquire()
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            free = limit - sum(counts[base : base + rows])
            if free > 0 and self._queued[bucket]:
                free -= self._waited_longer(base, mine, waiting_since)
            start = 0.0
            if free > 0 and interval:
                now = time.monotonic()
                start = max(now, self._starts[bucket])
                if start > now and waiting_since is None:
                    free = 0  # the rate cap would make it wait: not a slot for at once
            if free <= 0:
                if waiting_since is not None:
                    self._set_waiting(bucket, mine, waiting_since)
                return None, 0
            if interval:
                self._starts[bucket] = start + interval
            counts[mine] += 1
            return start, free - 1
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
            threads.release()

    def _waited_longer(self, base: int, mine: int, since: float | None) -> int:
        """How many other rows have a first waiter older than ``since`` (None: now)."""
        cutoff = float("inf") if since is None else since
        waiting = self._waiting
        return sum(1 for cell in range(base, base + self.rows) if cell != mine and 0 < waiting[cell] < cutoff)

    def _set_waiting(self, bucket: int, cell: int, since: float) -> None:
        """Under the lock: keep ``queued`` the count of rows waiting for ``bucket``."""
        before = self._waiting[cell]
        if bool(before) != bool(since):
            self._queued[bucket] += 1 if since else -1
        self._waiting[cell] = since

    def give_back(self, bucket: int) -> None:
        """Release a slot this process took. No lock: only this process writes its cell."""
        cell = bucket * self.rows + self.row
        if self._counts[cell] > 0:
            self._counts[cell] -= 1

    def set_waiting(self, bucket: int, since: float) -> None:
        """Since when this process's first waiter for ``bucket`` waits (0: nobody)."""
        cell = bucket * self.rows + self.row
        if bool(self._waiting[cell]) == bool(since):
            self._waiting[cell] = since  # own cell, ``queued`` unchanged: no lock
            return
        with self._lock:
            self._set_waiting(bucket, cell, since)

    def next_row(self, bucket: int) -> int:
        """The row whose first waiter for ``bucket`` has waited longest, or -1. No lock: a
        stale read costs at most one poll interval of the row it missed."""
        if not self._queued[bucket]:
            return -1
        base = bucket * self.rows
        best, oldest = -1, float("inf")
        for row, since in enumerate(self._waiting[base : base + self.rows]):
            if 0 < since < oldest:
                best, oldest = row, since
        return best

    def in_flight(self, bucket: int) -> int:
        """Slots of ``bucket`` taken machine-wide (for tests and diagnostics)."""
        base = bucket * self.rows
        return sum(self._counts[base : base + self.rows])


def _lock_path_for(shm_name: str) -> str:
    """The file to flock: on Linux the segment's own file in /dev/shm, which goes away with the
    segment (also when the resource tracker removes it after a hard exit); elsewhere a temp file.
    """
    own = os.path.join("/dev/shm", shm_name.lstrip("/"))
    if os.path.isfile(own):
        return own
    fd, path = tempfile.mkstemp(prefix="pipeline-hosts-", suffix=".lock")
    os.close(fd)
    return path
