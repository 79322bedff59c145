"""When a worker may start another download: enough in flight to hide latency, no more
bodies held than the CPU can use soon.

Two limits, because W1-style runs (hash and store) and W2-style runs (decode and resize)
need opposite things from one ``--concurrency``:

* at 100 ms of latency a worker needs ~200 requests in flight to keep a core busy with
  hashing, so the in-flight cap may grow up to ``--concurrency``;
* when decoding is the bottleneck, every extra download only adds a body waiting in memory
  (~260 KB each; 256 of them per worker pushed the tree past 300 MB, measured in bench/).

So a download starts only while fewer than ``backlog_limit`` bodies wait for (or are in)
the CPU stage (see below), and the in-flight cap starts small and grows by one for each
download that completes while the cap was the binding limit (TCP's slow start: it doubles
every round trip), up to ``--concurrency``. A worker process has one admission for all the shards it
holds (they overlap, worker/resources.py), so only its first shard ramps up.

The backlog is also bounded in bytes (the caller's ``max_backlog_bytes``): 32 bodies are 8 MB
of bench's JPEGs but could be 1.6 GB at ``--max-bytes`` 50 MB each.

The backlog limit is a floor, not a constant: it grows to the number of bodies the CPU
stage gets through in ~1.5 round trips (moving averages of download and processing time),
up to ``--concurrency``. A fixed 32 covered a round trip of decoding (W2: 4.5 ms a body) but
only ~25 ms of hashing (W1: ~0.7 ms): at 100 ms the worker stopped downloading as soon as a
wave of bodies arrived, then sat idle for most of the next round trip (measured: in flight
swinging between 1 and 256, processes ~70% busy, W1 at 100 ms 1,900/s).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

# Bodies held for the CPU stage cover this many average download times of its work.
COVER_ROUND_TRIPS = 1.5
_SMOOTHING = 0.05  # weight of each new sample in the moving averages


class Admission:
    __slots__ = (
        "_cpu_s",
        "_fetch_s",
        "_waiters",
        "backlog",
        "backlog_bytes",
        "backlog_limit",
        "cap",
        "ceiling",
        "in_flight",
        "max_backlog_bytes",
        "min_backlog",
        "threads",
    )

    def __init__(
        self, ceiling: int, backlog_limit: int, *, start: int, threads: int = 1, max_backlog_bytes: int = 2**62
    ) -> None:
        self.ceiling = ceiling  # --concurrency
        self.min_backlog = backlog_limit
        self.backlog_limit = backlog_limit
        self.threads = threads  # CPU threads working through the backlog
        self._fetch_s: float | None = None  # moving average of one download, seconds
        self._cpu_s: float | None = None  # moving average of one body's CPU stage, seconds
        self.cap = max(1, min(start, ceiling))
        self.in_flight = 0  # downloads started, body not yet complete
        self.backlog = 0  # bodies waiting for the CPU stage or in it
        self.backlog_bytes = 0  # ... and their size
        self.max_backlog_bytes = max_backlog_bytes
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Downloads parked until there is room (one that is woken leaves the count at once)."""
        return len(self._waiters)

    def _room(self) -> bool:
        return (
            self.in_flight < self.cap
            and self.backlog < self.backlog_limit
            and self.backlog_bytes < self.max_backlog_bytes
        )

    async def start_download(self) -> None:
        while not self._room():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._wake()  # pass on a wake-up this task can no longer use
                raise
        self.in_flight += 1

    async def sleep_outside(self, seconds: float) -> None:
        """Sleep without holding a download slot, then take one again (waiting in line).

        For a download that waits between attempts (backoff, ``Retry-After``, a host's
        cool-down): it must not keep a slot other hosts' rows could use meanwhile (issue 11:
        one host answering 429 to many rows held every slot of the worker).
        """
        self.in_flight -= 1
        self._wake()
        try:
            await asyncio.sleep(seconds)
            await self.start_download()
        except BaseException:
            self.in_flight += 1  # still counted as in flight: the caller's download_done ends it
            raise

    def download_done(self, *, has_body: bool, seconds: float | None = None, size: int = 0) -> None:
        if seconds is not None and has_body:  # failures (timeouts...) say nothing of arrivals
            self._fetch_s = _average(self._fetch_s, seconds)
        if self.in_flight >= self.cap and self.backlog < self.backlog_limit:
            self.cap = min(self.ceiling, self.cap + 1)  # the cap was what held us back
        self.in_flight -= 1
        if has_body:
            self.backlog += 1
            self.backlog_bytes += size
        self._wake()

    def processed(self, seconds: float | None = None, size: int = 0) -> None:
        self.backlog -= 1
        self.backlog_bytes -= size
        if seconds is not None:
            self._cpu_s = _average(self._cpu_s, seconds)
            self._retarget()
        self._wake()

    def _retarget(self) -> None:
        if self._fetch_s is None or not self._cpu_s:
            return
        cover = math.ceil(COVER_ROUND_TRIPS * self._fetch_s * self.threads / self._cpu_s)
        self.backlog_limit = max(self.min_backlog, min(self.ceiling, cover))

    def _wake(self) -> None:
        room = min(self.cap - self.in_flight, self.backlog_limit - self.backlog)
        if self.backlog_bytes >= self.max_backlog_bytes:
            room = 0
        while room > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1


def _average(current: float | None, sample: float) -> float:
    return sample if current is None else current + _SMOOTHING * (sample - current)
