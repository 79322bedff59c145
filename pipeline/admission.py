"""When a worker may start another download: enough in flight to hide latency, no more
bodies held than the CPU can use soon.

Two limits, because W1-style runs (hash and store) and W2-style runs (decode and resize)
need opposite things from one ``--concurrency``:

* at 100 ms of latency a worker needs ~200 requests in flight to keep a core busy with
  hashing, so the in-flight cap may grow up to ``--concurrency``;
* when decoding is the bottleneck, every extra download only adds a body waiting in memory
  (~260 KB each; 256 of them per worker pushed the tree past 300 MB, measured in bench/).

So a download starts only while fewer than ``backlog_limit`` bodies wait for (or are in)
the CPU stage (the worker sets it to cover a round trip of decoding), and the in-flight cap starts small and grows by one for each download that
completes while the cap was the binding limit (TCP's slow start: it doubles every round
trip), up to ``--concurrency``. A worker process has one admission for all the shards it
holds (they overlap, worker.py), so only its first shard ramps up.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    __slots__ = ("ceiling", "backlog_limit", "cap", "in_flight", "backlog", "_waiters")

    def __init__(self, ceiling: int, backlog_limit: int, *, start: int) -> None:
        self.ceiling = ceiling  # --concurrency
        self.backlog_limit = backlog_limit
        self.cap = max(1, min(start, ceiling))
        self.in_flight = 0  # downloads started, body not yet complete
        self.backlog = 0  # bodies waiting for the CPU stage or in it
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _room(self) -> bool:
        return self.in_flight < self.cap and self.backlog < self.backlog_limit

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

    def download_done(self, *, has_body: bool) -> None:
        if self.in_flight >= self.cap and self.backlog < self.backlog_limit:
            self.cap = min(self.ceiling, self.cap + 1)  # the cap was what held us back
        self.in_flight -= 1
        if has_body:
            self.backlog += 1
        self._wake()

    def processed(self) -> None:
        self.backlog -= 1
        self._wake()

    def _wake(self) -> None:
        room = min(self.cap - self.in_flight, self.backlog_limit - self.backlog)
        while room > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1
