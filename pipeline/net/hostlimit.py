"""Per-host limits as one process keeps them: waiting for a slot of the host table (``HostGate``, ``Hold``).

Per-host politeness for a whole machine: requests in flight and a start-rate cap per host,
shared by every worker process through one table in shared memory (hosttable.py).

Why: each worker has its own aiohttp connector, so ``limit_per_host`` alone lets one host
see ``--procs × --per-host`` requests at once (16 cores × 8 = 128: how crawlers get banned),
and a rate cap kept per process would multiply the same way. The local executor creates a
``HostTable`` once per run (``HostTable.create``, hosttable.py), each worker attaches it in
its pool initializer (``install``), and ``fetch.py`` holds a slot of the host of every
request hop (``Hold``) through this process's ``HostGate``.

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
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

from pipeline.net.hosttable import HostTable, TableHandle

__all__ = ["Hold", "HostGate", "current_gate", "install", "private_gate", "uninstall"]

_WAKE = struct.Struct("=i")  # a wake-up datagram: the bucket
# The first waiter's poll (first, longest interval): a safety net when wake-ups come by
# socket, the only news of other processes' releases otherwise; a private table has no others.
_POLL_WITH_WAKEUPS: tuple[float, float] | None = (0.005, 0.1)
_POLL_WITHOUT: tuple[float, float] | None = (0.002, 0.032)


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
