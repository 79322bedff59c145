"""The per-process row loop: one event loop on its own thread, the rows it holds, when a call answers."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from pipeline.config import RunConfig
from pipeline.errors import PipelineError
from pipeline.models import ItemResult, ManifestRow, Shard
from pipeline.worker.items import _item, failed_items
from pipeline.worker.resources import _sessions, _store
from pipeline.worker.rows import _by_source, _Hooks, _run, _where

# A feed call returns (so the process receives its next batch) once its rows still waiting to
# start would last less than this at its recent rate of starts: the next batch already waits
# in the pool's call queue and arrives in well under a millisecond.
LOW_WATER_S = 0.05
# ... bounded so that a fast worker (W1: ~2,000 starts/s) keeps a few dozen rows ready and a
# slow one (12 MP photos from a folder: ~15/s) holds only a couple: a process that holds many
# rows of slow work at the end of a run is the whole tail (issue 10: one worker per folder).
LOW_WATER_ROWS = (2, 64)
# How often a waiting call looks again (a safety net: the loop thread notifies).
RECHECK_S = 0.25
# A feed call also answers when it has held finished rows this long while no download here
# started: every slot is waiting on the network (silent hosts, read timeouts), and rows that
# finished earlier must reach the catalog (a kill loses only what is in flight) and the
# progress display. A CPU-bound process keeps starting downloads, so this never feeds it
# rows it cannot start (the tail that LOW_WATER_ROWS prevents).
STALLED_S = 1.0
# A collect call that finds nothing running waits this long before answering, so that idle
# processes do not spin with the parent while another process finishes its last rows.
IDLE_COLLECT_S = 0.05


@dataclass(slots=True)
class Finished:
    """What ``feed_rows`` and ``collect_rows`` hand back: the rows this process finished
    since its last answer (any batch, any order), and what they cost."""

    items: list[ItemResult] = field(default_factory=list)
    worker_pid: int = 0


class _RowLoop:
    """This process's event loop, on a thread of its own, and the rows running on it.

    Rows, not shards, are what a process holds and reports: each finished row goes to the
    parent with the next answer, so a row waiting on a silent server holds one download slot
    and nothing else (issue 10: a 500-row shard held back by one URL that never answers).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pipeline-loop", daemon=True)
        self._thread.start()
        self._changed = threading.Condition()
        self._waiting = 0  # fed sources whose download has not started yet
        self._running = 0  # fed sources not finished
        self._starts: deque[float] = deque(maxlen=32)  # recent download starts: the process's pace
        self._done = Finished(worker_pid=os.getpid())
        self._done_since = math.inf  # when the oldest row in _done finished
        self._fatal: PipelineError | None = None

    def submit(self, batch: Shard, config: RunConfig, into: Finished | None) -> concurrent.futures.Future[None]:
        """Run ``batch`` on the loop; its rows go to ``into``, or (None) to the next answer."""
        store = _store(config)
        by_source = _by_source(batch)
        invalid = [_item(row, None) for row in batch.rows if row.invalid is not None]
        with self._changed:
            self._waiting += len(by_source)
            if into is None:
                self._running += len(by_source)
                self._done.items.extend(invalid)
            else:
                into.items.extend(invalid)
        count = _BatchCount(len(by_source), into is None, tuple(r for rows in by_source.values() for r in rows))
        hooks = _Hooks(
            functools.partial(self._started, count),
            functools.partial(self._finished, count) if into is None else into.items.extend,
        )
        future = asyncio.run_coroutine_threadsafe(_run(by_source, config, store, hooks), self.loop)
        future.add_done_callback(functools.partial(self._batch_ended, count))
        return future

    def take(
        self, *, until_idle: bool, at_least_one: bool = False, max_wait_s: float | None = None
    ) -> Finished:
        since = time.monotonic()
        deadline = math.inf if max_wait_s is None else since + max_wait_s
        with self._changed:
            if at_least_one and not self._running and not self._done.items:
                self._changed.wait(IDLE_COLLECT_S)
            while not self._ready(until_idle, at_least_one):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(RECHECK_S, left))
            if self._fatal is not None:
                raise self._fatal
            done, self._done = self._done, Finished(worker_pid=os.getpid())
            self._done_since = math.inf
            return done

    def _ready(self, until_idle: bool, at_least_one: bool) -> bool:
        if self._fatal is not None or not self._running:
            return True
        if until_idle:
            return False
        if at_least_one:
            return bool(self._done.items)
        # Not "or after a while": every early answer brings this process another batch, and
        # a CPU-bound process then held ~500 rows it could not start (the tail of the run).
        return self._waiting <= self._low_water() or self._stalled()

    def _stalled(self) -> bool:
        now = time.monotonic()
        last_start = self._starts[-1] if self._starts else -math.inf
        return now - self._done_since >= STALLED_S and now - last_start >= STALLED_S

    def _low_water(self) -> int:
        low, high = LOW_WATER_ROWS
        if len(self._starts) < 2 or self._starts[-1] <= self._starts[0]:
            return low
        rate = (len(self._starts) - 1) / (self._starts[-1] - self._starts[0])
        return max(low, min(high, round(rate * LOW_WATER_S)))

    def _started(self, count: _BatchCount) -> None:
        with self._changed:
            count.started += 1
            self._waiting -= 1
            self._starts.append(time.monotonic())
            if self._waiting <= LOW_WATER_ROWS[1]:
                self._changed.notify_all()

    def _finished(self, count: _BatchCount, items: list[ItemResult]) -> None:
        with self._changed:
            count.finished += 1
            count.reported.update(item.row for item in items)
            self._running -= 1
            if not self._done.items:
                self._done_since = time.monotonic()
            self._done.items.extend(items)
            self._changed.notify_all()

    def _batch_ended(self, count: _BatchCount, future: concurrent.futures.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        with self._changed:
            # A batch that raised (run-fatal error, cancelled) leaves rows that never started
            # or ended: they are no longer this process's to wait for. Left counted, the
            # process never again asked for work before all its rows ended (issue 11).
            self._waiting -= count.sources - count.started
            if count.fed:
                self._running -= count.sources - count.finished
            count.started = count.finished = count.sources
            if isinstance(exc, PipelineError) and count.fed:
                self._fatal = exc
            elif exc is not None and count.fed:
                # A bug outside a row's own guard: its rows are still owed to the parent, which
                # would otherwise wait for them for ever. They fail as `internal`, saying why.
                lost = [row for row in count.rows if row.row not in count.reported]
                if lost and not self._done.items:
                    self._done_since = time.monotonic()
                self._done.items.extend(failed_items(lost, f"{type(exc).__name__}: {exc} ({_where(exc)})"))
            self._changed.notify_all()

    def close(self) -> None:
        """Close the sessions inside their loop (else aiohttp warns about them at exit)."""
        sessions = list(_sessions.values())
        _sessions.clear()
        for session in sessions:
            close = asyncio.run_coroutine_threadsafe(session.close(), self.loop)  # type: ignore[attr-defined]
            close.result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


@dataclass(slots=True)
class _BatchCount:
    """How many of one batch's sources started and ended (under ``_RowLoop._changed``)."""

    sources: int
    fed: bool
    rows: tuple[ManifestRow, ...]  # the batch's valid rows (invalid ones are reported at once)
    started: int = 0
    finished: int = 0
    reported: set[int] = field(default_factory=set)


_the_loop: _RowLoop | None = None
_the_loop_lock = threading.Lock()


def _row_loop() -> _RowLoop:
    global _the_loop
    with _the_loop_lock:
        if _the_loop is None:
            _the_loop = _RowLoop()
            atexit.register(_close_row_loop)
        return _the_loop


def _close_row_loop() -> None:
    global _the_loop
    with _the_loop_lock:
        loop, _the_loop = _the_loop, None
    if loop is not None:
        loop.close()
