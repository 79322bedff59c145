"""The calls a parent makes into a worker process: start-up, then rows in and rows out as they end.

Plain picklable functions of plain picklable arguments that return metadata only, so any
process can run them unchanged: ``feed_rows`` / ``collect_rows`` (rows in, rows out as they
end) are what the local process pool and the Ray actors call; ``run_shard(batch, config)``
runs one batch to its end in a single call, for callers that want exactly that. They are
pickled by name (``pipeline.worker.protocol.feed_rows``), so they stay top-level functions.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from pipeline.config import RunConfig
from pipeline.memory import limit_arenas
from pipeline.models import Shard, ShardReport
from pipeline.net.hostlimit import install as install_host_table
from pipeline.net.hosttable import TableHandle
from pipeline.worker.loop import Finished, _row_loop

# How long a new process waits for its siblings to start (see ``init_worker``).
START_TIMEOUT_S = 30.0


def init_worker(start: threading.Barrier | None = None, handle: TableHandle | None = None) -> None:
    """Pool initializer: the parent owns shutdown, so Ctrl-C must not kill workers mid-write.

    ``handle``: the parent's host table, so that per-host limits hold machine-wide (fetch.py).
    With ``start`` (a barrier of every process of the pool), wait until all of them are up:
    a process that starts first would otherwise pull every batch of a small manifest before
    the others exist (they need ~0.3 s to start; it pulls a batch in ~1 ms).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_arenas()
    if handle is not None:
        install_host_table(handle)
    if start is not None:
        try:
            start.wait(timeout=START_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass  # a sibling failed to start: work anyway, the parent sees the broken pool


def ready() -> int:
    """A no-op call: the parent submits one per process so that the pool starts them all."""
    return os.getpid()


def run_shard(batch: Shard, config: RunConfig) -> ShardReport:
    """Fetch and process every row of ``batch`` (a shard or part of one) and return them all;
    never raises for a per-item failure. One call per batch (the executors feed rows instead).

    Raises ``StorageError`` when OUT cannot be written: every later item would fail too.
    """
    started = time.perf_counter()
    done = Finished(worker_pid=os.getpid())
    _row_loop().submit(batch, config, done).result()
    report = ShardReport(batch.shard_id, sorted(done.items, key=lambda item: item.row))
    report.fetched = sum(item.attempts > 0 for item in report.items)
    report.bytes_downloaded = sum(item.image.bytes for item in report.items if item.image)
    report.elapsed_s = time.perf_counter() - started
    report.worker_pid = done.worker_pid
    return report


def feed_rows(batch: Shard, config: RunConfig, *, wait_all: bool = False) -> Finished:
    """Start ``batch`` here; return once this process needs more rows (or, with
    ``wait_all``, once it has finished everything it holds), with the rows finished so far.

    Raises ``StorageError`` (run-fatal) if any row of this process met one.
    """
    loop = _row_loop()
    loop.submit(batch, config, None)
    return loop.take(until_idle=wait_all)


def collect_rows(max_wait_s: float | None = None) -> Finished:
    """The rows this process finished since the last call; waits for at least one if any is
    still running here (at most ``max_wait_s``, then answers with none: a caller that keeps
    one call per process, as the Ray executor does, can then feed it again without waiting
    for a row stuck on a silent server)."""
    return _row_loop().take(until_idle=False, at_least_one=True, max_wait_s=max_wait_s)
