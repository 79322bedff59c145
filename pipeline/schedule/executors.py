"""Ways to run batches of rows. Each takes a lazy stream of batches (``batches.py``) and
yields the rows as they finish, in whatever order they finish.

An executor never touches the catalog: the runner, in the parent, is the single writer.
It keeps a bounded window of rows in flight, so memory does not grow with the manifest,
and it never drops a row: a row that cannot be run after ``max_attempts`` comes back as an
``internal`` failure.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from pipeline.config import RunConfig, default_procs
from pipeline.errors import PipelineError, UsageError
from pipeline.models import ManifestRow, Shard
from pipeline.net.hosttable import HostTable, supported
from pipeline.schedule.batches import BATCH_ROWS, batches, split
from pipeline.worker.items import failed_items
from pipeline.worker.loop import Finished
from pipeline.worker.protocol import collect_rows, feed_rows, init_worker, ready

# With nothing finished for this long, an executor yields an empty ``Finished`` anyway, so
# the runner can commit what it holds while every worker waits on slow servers.
TICK_S = 1.0


class RowExecutor(Protocol):
    def run(self, batches: Iterable[Shard], config: RunConfig) -> Iterator[Finished]: ...


def window_rows(procs: int, config: RunConfig) -> int:
    """Rows handed to workers and not yet reported, at most: what ``procs`` processes can
    hold (up to ``--concurrency`` downloads in flight each, as many bodies waiting for the
    CPU, and a few batches waiting to start), so the window never starves them, and a row
    stuck on a silent server takes one place in it, not a shard's worth."""
    return procs * (2 * config.fetch.concurrency + 4 * BATCH_ROWS)


class LocalExecutor:
    """Batches on a ``ProcessPoolExecutor`` of ``procs`` spawned worker processes.

    ``spawn`` rather than fork: the parent may hold SQLite handles, threads and (in Jupyter)
    a running event loop, none of which survive a fork safely.

    Batches are fed, not run one per call: ``feed_rows`` returns as soon as its process is
    about to run out of rows to start (a few milliseconds of its work), with the rows that
    process finished, so every process pulls work at its own pace until the last row.
    Rows a process still holds when nothing is left to feed come back through
    ``collect_rows`` calls.

    After a worker dies (OOM killer, a decoder crash), the rows that were out run again,
    one batch at a time; a batch that kills its worker alone is halved until the row that
    does it is found, and a row that kills ``max_attempts`` workers is recorded as
    ``internal``. No other row is lost or failed.
    """

    def __init__(self, procs: int, *, window: int | None = None, max_attempts: int = 3) -> None:
        self.procs = procs
        self.window = window  # rows; None: window_rows(procs, config)
        self.max_attempts = max_attempts
        self._pool: ProcessPoolExecutor | None = None
        self._held: dict[int, ManifestRow] = {}  # row -> handed to a worker, not reported
        self._suspects: list[Shard] = []  # batches to rerun alone after a death
        self._alone: Shard | None = None  # the suspect batch running by itself
        self._deaths: dict[int, int] = {}  # row -> workers it was alone with when they died
        self._hosts: HostTable | None = None  # per-host limits shared by the workers of a run
        self._ready: list[Future[int]] = []  # the current pool's start-up calls

    def run(self, batches: Iterable[Shard], config: RunConfig) -> Iterator[Finished]:
        source = iter(batches)
        pending: dict[Future[Finished], Shard | None] = {}  # a feed's batch; None: a collect
        self._held, self._suspects, self._deaths, self._alone = {}, [], {}, None
        window = self.window or window_rows(self.procs, config)
        self._pool = self._new_pool()
        try:
            while True:
                broken = not self._fill(pending, source, config, window)
                if not pending and not broken:
                    return
                # After a refused submit, what had finished before the death still counts.
                done = {future for future in pending if future.done()}
                if not broken:
                    done, _ = wait(pending, timeout=TICK_S, return_when=FIRST_COMPLETED)
                    if not done:
                        yield Finished()  # a tick: the runner commits what it holds
                        continue
                for future in done:
                    fed = pending.pop(future)
                    try:
                        finished = future.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except PipelineError:
                        raise  # run-fatal (e.g. disk full): stop scheduling
                    except Exception as exc:  # a bug feeding one batch must not stop the run
                        if fed is None:
                            raise  # collect_rows itself failed: no batch to blame, retrying would loop
                        self._alone = None if fed is self._alone else self._alone
                        yield self._retry_or_fail(self._still_held(fed.rows), f"{type(exc).__name__}: {exc}")
                        continue
                    if fed is not None and fed is self._alone:
                        self._alone = None
                    yield self._accept(finished)
                if broken:
                    self._check_started()
                    yield self._after_death(config.shard_size)
                    pending.clear()
                    self.shutdown()
                    self._pool = self._new_pool()
        finally:
            self.shutdown()
            self._drop_host_table()

    def _fill(
        self, pending: dict[Future[Finished], Shard | None], source: Iterator[Shard], config: RunConfig, window: int
    ) -> bool:
        """Submit work up to the window. False: the pool broke (a worker died since the last
        look), and the caller handles the death; the rows of a refused batch are held, so
        they run again with the others."""
        assert self._pool is not None
        try:
            self._submit_work(pending, source, config, window)
        except BrokenProcessPool:
            return False
        return True

    def _submit_work(
        self, pending: dict[Future[Finished], Shard | None], source: Iterator[Shard], config: RunConfig, window: int
    ) -> None:
        assert self._pool is not None
        if self._alone is not None:
            return  # a suspect runs by itself until it ends
        if self._suspects:
            # A dead worker breaks the whole pool and every row in it, so after a death the
            # rows that were out run one batch at a time: only then is a death attributable.
            batch = self._suspects.pop()
            self._hold(batch)
            try:
                pending[self._pool.submit(feed_rows, batch, config, wait_all=True)] = batch
            except BrokenProcessPool:
                self._suspects.append(batch)  # refused, not run: it killed nothing
                raise
            self._alone = batch
            return
        while len(self._held) < window:
            batch = next(source, None)
            if batch is None:
                break
            self._hold(batch)
            pending[self._pool.submit(feed_rows, batch, config)] = batch
        collects = sum(1 for batch in pending.values() if batch is None)
        if self._held and len(pending) == collects:
            # Nothing more to feed (or the window is full of rows still running): fetch what
            # the processes finished. A call per process, topped up as each answers (with
            # something, or after a moment if it holds nothing): a process stuck waiting on
            # a silent server must not hold back the rows another one finished.
            for _ in range(self.procs - collects):
                pending[self._pool.submit(collect_rows)] = None

    def _hold(self, batch: Shard) -> None:
        self._held.update((row.row, row) for row in batch.rows)

    def _still_held(self, rows: Iterable[ManifestRow]) -> list[ManifestRow]:
        return [row for row in rows if row.row in self._held]

    def _accept(self, finished: Finished) -> Finished:
        # A row reported twice (rerun after a death that came after its report) is kept once.
        items = [item for item in finished.items if self._held.pop(item.row, None) is not None]
        return Finished(items, finished.worker_pid)

    def _after_death(self, shard_size: int) -> Finished:
        alone, self._alone = self._alone, None
        if alone is not None:  # it ran by itself, so it is what killed its worker
            return self._retry_or_fail(self._still_held(alone.rows), "worker process died")
        by_shard: dict[int, list[ManifestRow]] = {}
        for row in self._held.values():
            by_shard.setdefault(row.row // shard_size, []).append(row)
        self._held.clear()
        for shard_id, rows in by_shard.items():
            self._suspects.extend(batches(rows, shard_id, BATCH_ROWS))
        return Finished()

    def _retry_or_fail(self, rows: list[ManifestRow], reason: str) -> Finished:
        """Rows whose worker died (or whose feed failed) while they ran alone: each has one
        more death to its name; those at ``max_attempts`` fail, the rest run again, halved."""
        for row in rows:
            self._held.pop(row.row, None)
            self._deaths[row.row] = self._deaths.get(row.row, 0) + 1
        again = [r for r in rows if self._deaths[r.row] < self.max_attempts]
        for half in split(again):
            if half:
                self._suspects.append(Shard(half[0].row, tuple(half)))  # the id only labels it
        out = [r for r in rows if self._deaths[r.row] >= self.max_attempts]
        return Finished(failed_items(out, f"{reason} (tried {self.max_attempts} times)"))

    def _new_pool(self) -> ProcessPoolExecutor:
        # One host table per run. A rebuilt pool follows the death of a worker, and the
        # old workers are all gone by now: their slots come back before new ones start.
        if self._hosts is None and supported():
            self._hosts = HostTable.create(self.procs)
        elif self._hosts is not None:
            self._hosts.reclaim()
        handle = self._hosts.handle if self._hosts is not None else None
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            self.procs,
            mp_context=context,
            initializer=init_worker,
            initargs=(context.Barrier(self.procs), handle),
        )
        # The pool starts a process per call it has no idle process for: one call each starts
        # them all at once, and the barrier in init_worker holds them until all are up.
        self._ready = [pool.submit(ready) for _ in range(self.procs)]
        return pool

    def _check_started(self) -> None:
        """A broken pool none of whose processes ever answered ``ready()`` died while starting:
        every worker would, so this is the run's fault, not its rows' (they stay unrun)."""
        if any(f.done() and not f.cancelled() and f.exception() is None for f in self._ready):
            return
        raise UsageError(_START_FAILED.format(main=_main_name()))

    def _drop_host_table(self) -> None:
        hosts, self._hosts = self._hosts, None
        if hosts is not None:
            hosts.destroy()

    def shutdown(self) -> None:
        """Stop at once: running rows are abandoned (they have committed nothing)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The public API would wait for running batches to finish; abandoning them is safe
        # because a row commits nothing until the parent writes it.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=5)


_START_FAILED = (
    "worker processes died while starting, before running any row (see their traceback above). "
    "Workers are spawned: each imports the main module ({main}) again, so a script that calls "
    'pipeline.run() at its top level must call it under `if __name__ == "__main__":` '
    "(Python docs: multiprocessing, \"Safe importing of main module\"); code read from stdin "
    "(`python -`) cannot be imported again: save it to a file with that guard"
)


def _main_name() -> str:
    main = sys.modules.get("__main__")
    return str(getattr(main, "__file__", None) or "<interactive>")


EXECUTORS = ("local", "ray")


def make_executor(name: str, *, procs: int | None = None, ray_address: str | None = None) -> RowExecutor:
    """The executor called ``name``: ``local`` (the default) or ``ray`` (needs ``pipeline[ray]``)."""
    if name == "local":
        if ray_address is not None:
            raise UsageError("--ray-address needs --executor ray")
        return LocalExecutor(procs or default_procs())
    if name == "ray":
        from pipeline.schedule.ray_executor import RayExecutor  # the only module that imports ray

        return RayExecutor(address=ray_address, num_cpus=procs)
    raise UsageError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
