"""Per-host politeness for a whole machine: requests in flight and a start-rate cap per host,
shared by every worker process through one table in shared memory.

Why: each worker has its own aiohttp connector, so ``limit_per_host`` alone lets one host
see ``--procs × --per-host`` requests at once (16 cores × 8 = 128: how crawlers get banned),
and a rate cap kept per process would multiply the same way. The local executor creates a
``HostTable`` once per run (``HostTable.create``), each worker attaches it in its pool
initializer (``install``), and ``fetch.py`` holds a slot of the host of every request hop
(``Hold``) through this process's ``HostGate``.

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

Waiting (``HostGate.acquire``) uses no busy loop. A release wakes the process that is next:
this one through an ``asyncio.Event``, another through a datagram to its socket (Linux
abstract namespace: nothing on disk). Only the first waiter of a host looks at the table;
a timer per host nudges it, backing off from 5 to 100 ms, in case a wake-up crossed its
registration (without sockets, from 2 to 32 ms: then the poll is how news of other
processes' releases arrives). Measured with two workers sharing 8 slots of one host, 124
waiting (``bench/host_contention.py``): the same requests/s and CPU per request as 4
connections per process in aiohttp's own queue.

Where no table is installed (Ray workers, a single ``fetch_url`` call in a test) limits stay
per process: the connector's ``limit_per_host``, and for ``--per-host-rate`` a private table
of this process (``private_gate``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory

from pipeline.errors import PipelineError

try:
    import fcntl
except ImportError:  # Windows: no flock; limits stay per process there (see ``supported``)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BUCKETS",
    "Hold",
    "HostGate",
    "HostLimitError",
    "HostTable",
    "TableHandle",
    "current_gate",
    "install",
    "private_gate",
    "supported",
    "uninstall",
]

BUCKETS = 16384
_MAGIC = 0x31_4C_48_70  # "pHL1"
_HEADER = struct.Struct("=III4x")
_WAKE = struct.Struct("=i")  # a wake-up datagram: the bucket
_INT, _FLOAT = 4, 8
# The first waiter's poll (first, longest interval): a safety net when wake-ups come by
# socket, the only news of other processes' releases otherwise; a private table has no others.
_POLL_WITH_WAKEUPS: tuple[float, float] | None = (0.005, 0.1)
_POLL_WITHOUT: tuple[float, float] | None = (0.002, 0.032)


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


# ---------------------------------------------------------------------------------------------
# Waiting, in one process


class _Waiter:
    __slots__ = ("event", "since")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.since = time.monotonic()


class _Queue:
    """This process's waiters for one bucket, first come first served, and the poll timer
    that nudges whichever of them is first (a safety net for missed wake-ups)."""

    __slots__ = ("poll", "timer", "waiters")

    def __init__(self, poll: float) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.poll = poll
        self.timer: asyncio.TimerHandle | None = None


class _Wakeups:
    """Datagram sockets that let a release in one process wake a waiter in another.

    Each row listens on an abstract-namespace address named after the table (Linux only;
    nothing on disk, gone with the process). A lost datagram (full queue, no listener)
    costs at most one poll interval of the first waiter.
    """

    def __init__(self, handle: TableHandle, row: int) -> None:
        self._prefix = f"\0pipeline-hosts-{handle.shm_name}-"
        self._send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._send.setblocking(False)
        self._listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._listen.setblocking(False)
        self._listen.bind(self._address(row))
        self._loop: asyncio.AbstractEventLoop | None = None

    def _address(self, row: int) -> str:
        return f"{self._prefix}{row}"

    def wake(self, row: int, bucket: int) -> None:
        with contextlib.suppress(OSError):  # refused (no listener), would block (queue full)
            self._send.sendto(_WAKE.pack(bucket), self._address(row))

    def listen(self, loop: asyncio.AbstractEventLoop, on_wake: Callable[[int], None]) -> None:
        """Deliver wake-ups on ``loop`` (the loop this process waits on)."""
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._listen.fileno())
        loop.add_reader(self._listen.fileno(), self._drain, on_wake)
        self._loop = loop

    def _drain(self, on_wake: Callable[[int], None]) -> None:
        while True:
            try:
                data = self._listen.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            if len(data) == _WAKE.size:
                on_wake(_WAKE.unpack(data)[0])

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._listen.fileno())
        self._send.close()
        self._listen.close()


def _wakeups_for(table: HostTable) -> _Wakeups | None:
    if table.handle is None or not sys.platform.startswith("linux"):
        return None  # a private table has one process; elsewhere: no abstract namespace, poll
    try:
        return _Wakeups(table.handle, table.row)
    except OSError:
        return None  # address taken (a stale process of this row?): polling still works


class HostGate:
    """This process's waiting room in front of a table: one per process, used on one loop."""

    def __init__(self, table: HostTable) -> None:
        self.table = table
        self._queues: dict[int, _Queue] = {}
        self._wakeups = _wakeups_for(table)
        self._poll = _POLL_WITH_WAKEUPS if self._wakeups is not None else _POLL_WITHOUT
        if table.handle is None:
            self._poll = None  # a private table: every release is one of ours, and wakes

    def close(self) -> None:
        if self._wakeups is not None:
            self._wakeups.close()
        self.table.close()

    def try_acquire(self, bucket: int, limit: int, interval: float) -> bool:
        """Take a slot that can start now, if nobody of ours waits for this host already."""
        if bucket in self._queues:
            return False
        start, _ = self.table.take(bucket, limit, interval)
        return start is not None

    async def acquire(self, bucket: int, limit: int, interval: float) -> None:
        """Wait for a slot of ``bucket`` and, under a rate cap, until its reserved start."""
        start = await self._wait_turn(bucket, limit, interval)
        delay = start - time.monotonic()
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self.release(bucket)
                raise

    def release(self, bucket: int) -> None:
        self.table.give_back(bucket)
        self._pass_on(bucket)

    def _pass_on(self, bucket: int) -> None:
        """Wake the process whose turn it is for ``bucket``: this one or another."""
        row = self.table.next_row(bucket)
        if row == self.table.row:
            self._wake_here(bucket)
        elif row >= 0 and self._wakeups is not None:
            self._wakeups.wake(row, bucket)

    def _wake_here(self, bucket: int) -> None:
        queue = self._queues.get(bucket)
        if queue is not None:
            queue.waiters[0].event.set()

    async def _wait_turn(self, bucket: int, limit: int, interval: float) -> float:
        queue = self._queues.get(bucket)
        if queue is None:
            queue = self._queues[bucket] = self._new_queue(bucket)
        me = _Waiter()
        queue.waiters.append(me)
        free = 0
        try:
            while True:
                if queue.waiters[0] is me:  # only the first waiter looks at the table
                    start, free = self.table.take(bucket, limit, interval, me.since)
                    if start is not None:
                        return start
                await me.event.wait()
                me.event.clear()
        finally:
            self._leave(bucket, queue, me, free)

    def _new_queue(self, bucket: int) -> _Queue:
        loop = asyncio.get_running_loop()
        if self._wakeups is not None:
            self._wakeups.listen(loop, self._wake_here)
        queue = _Queue(self._poll[0] if self._poll is not None else 0.0)
        if self._poll is not None:
            queue.timer = loop.call_later(queue.poll, self._nudge, bucket, queue)
        return queue

    def _nudge(self, bucket: int, queue: _Queue) -> None:
        """The poll timer: the first waiter looks again; the interval backs off (and is not
    shortened by wake-ups: they do the work, the poll only catches one that went missing)."""
        if self._queues.get(bucket) is not queue or self._poll is None:
            return
        queue.waiters[0].event.set()
        queue.poll = min(2 * queue.poll, self._poll[1])
        queue.timer = asyncio.get_running_loop().call_later(queue.poll, self._nudge, bucket, queue)

    def _leave(self, bucket: int, queue: _Queue, me: _Waiter, free: int) -> None:
        """``me`` is done waiting: with a slot (``free``: how many more are free) or not."""
        was_first = queue.waiters[0] is me
        queue.waiters.remove(me)
        if not queue.waiters:
            del self._queues[bucket]
            if queue.timer is not None:
                queue.timer.cancel()
            self.table.set_waiting(bucket, 0.0)
        elif was_first:
            self.table.set_waiting(bucket, queue.waiters[0].since)
            if free > 0:  # else the next release (or the poll) wakes the new first waiter
                queue.waiters[0].event.set()
        if free > 0:
            self._pass_on_elsewhere(bucket)

    def _pass_on_elsewhere(self, bucket: int) -> None:
        # Slots are still free: the next process in line may take one too.
        row = self.table.next_row(bucket)
        if row >= 0 and row != self.table.row and self._wakeups is not None:
            self._wakeups.wake(row, bucket)


class Hold:
    """The host slot of one request attempt: one hop in flight at a time, so taking the next
    hop's host gives back the previous one."""

    __slots__ = ("_bucket", "_gate", "_interval", "_limit")

    def __init__(self, gate: HostGate, limit: int, rate: float | None) -> None:
        self._gate = gate
        self._limit = limit
        self._interval = 1.0 / rate if rate else 0.0
        self._bucket: int | None = None

    def try_take(self, host: str | None, port: int | None) -> bool:
        """Hold ``host:port`` if that needs no wait; else hold nothing and return False."""
        self.drop()
        bucket = self._gate.table.bucket(host, port)
        if not self._gate.try_acquire(bucket, self._limit, self._interval):
            return False
        self._bucket = bucket
        return True

    async def take(self, host: str | None, port: int | None) -> None:
        """Hold ``host:port``, waiting for a slot and for the rate cap as long as needed."""
        self.drop()
        bucket = self._gate.table.bucket(host, port)
        await self._gate.acquire(bucket, self._limit, self._interval)
        self._bucket = bucket

    def drop(self) -> None:
        if self._bucket is not None:
            bucket, self._bucket = self._bucket, None
            self._gate.release(bucket)


# ---------------------------------------------------------------------------------------------
# This process's gate


_gate: HostGate | None = None
_private: HostGate | None = None


def install(handle: TableHandle) -> HostGate:
    """Attach the parent's table in this worker (pool initializer); idempotent."""
    global _gate
    if _gate is None or _gate.table.handle != handle:
        uninstall()
        _gate = HostGate(HostTable.attach(handle))
        # Detach at exit: SharedMemory's own finaliser would complain that our views exist.
        atexit.register(uninstall)
    return _gate


def uninstall() -> None:
    """Detach this process's shared table (a worker keeps its own until it exits; tests)."""
    global _gate
    gate, _gate = _gate, None
    if gate is not None:
        gate.close()


def current_gate() -> HostGate | None:
    """The machine-wide gate of this process, if the executor installed one."""
    return _gate


def private_gate() -> HostGate:
    """A gate over a table of this process only (limits per process, as without a table)."""
    global _private
    if _private is None:
        _private = HostGate(HostTable.private())
    return _private
