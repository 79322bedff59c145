"""Ways to run shards. Each takes a lazy stream of shards and yields one report per shard.

An executor never touches the catalog: the runner, in the parent, is the single writer.
It keeps a bounded window of shards in flight, so memory does not grow with the manifest,
and it never drops a shard: a shard that cannot be run after ``max_attempts`` comes back
as a report whose rows are ``internal`` failures.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from pipeline.config import RunConfig, default_procs
from pipeline.errors import PipelineError, UsageError
from pipeline.hostlimit import HostTable, supported
from pipeline.models import Shard, ShardReport
from pipeline.worker import ShardBatch, collect_shards, failed_report, feed_shard, init_worker


class ShardExecutor(Protocol):
    def run(self, shards: Iterable[Shard], config: RunConfig) -> Iterator[ShardReport]: ...


class LocalExecutor:
    """Shards on a ``ProcessPoolExecutor`` of ``procs`` spawned worker processes.

    ``spawn`` rather than fork: the parent may hold SQLite handles, threads and (in Jupyter)
    a running event loop, none of which survive a fork safely.

    Shards are fed, not run one per call: ``feed_shard`` returns as soon as its process is
    about to run out of rows to start, with whatever shards that process finished, so the
    next shard overlaps the end of the previous one (worker.py). Shards a process still
    holds when nothing is left to feed come back through ``collect_shards`` calls.
    """

    def __init__(self, procs: int, *, window: int | None = None, max_attempts: int = 3) -> None:
        self.procs = procs
        # Shards handed to workers and not yet reported: each process holds ~2 (one ending,
        # one starting) plus one waiting in the pool's queue; a few more keep feeding going
        # past a shard held up by one slow URL. All of them rerun after a kill.
        self.window = window or 4 * procs
        self.max_attempts = max_attempts
        self._pool: ProcessPoolExecutor | None = None
        self._suspects: list[Shard] = []
        self._held: dict[int, Shard] = {}  # shard id -> shard handed to a worker, no report yet
        self._failures: dict[int, int] = {}
        self._hosts: HostTable | None = None  # per-host limits shared by the workers of a run

    def run(self, shards: Iterable[Shard], config: RunConfig) -> Iterator[ShardReport]:
        source = iter(shards)
        pending: dict[Future[ShardBatch], Shard | None] = {}  # a feed's shard; None: a collect
        self._suspects, self._held, self._failures = [], {}, {}
        self._pool = self._new_pool()
        try:
            while True:
                self._fill(pending, source, config)
                if not pending:
                    return
                alone = len(self._held) == 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    fed = pending.pop(future)
                    try:
                        batch = future.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except PipelineError:
                        raise  # run-fatal (e.g. disk full): stop scheduling
                    except Exception as exc:  # a bug feeding one shard must not stop the run
                        if fed is None:
                            raise  # collect_shards itself failed: no shard to blame, retrying would loop
                        batch = ShardBatch(failed=[(fed.shard_id, f"{type(exc).__name__}: {exc}")])
                    yield from self._accept(batch)
                if broken:
                    yield from self._after_death(alone)
                    pending.clear()
                    self.shutdown()
                    self._pool = self._new_pool()
        finally:
            self.shutdown()
            self._drop_host_table()

    def _fill(
        self, pending: dict[Future[ShardBatch], Shard | None], source: Iterator[Shard], config: RunConfig
    ) -> None:
        assert self._pool is not None
        if self._suspects:
            # A dead worker breaks the whole pool and every shard in it, so after a death the
            # shards that were in flight run one at a time: only then is a death attributable.
            if not self._held and not pending:
                shard = self._suspects.pop()
                self._held[shard.shard_id] = shard
                pending[self._pool.submit(feed_shard, shard, config, wait_all=True)] = shard
        else:
            while len(self._held) < self.window:
                shard = next(source, None)
                if shard is None:
                    break
                self._held[shard.shard_id] = shard
                pending[self._pool.submit(feed_shard, shard, config)] = shard
        if self._held and not pending:
            # Nothing more to feed (or the window is full of shards still running): fetch
            # what the processes finished. One call per process; each answers when it has
            # something, or at once if it holds nothing.
            pending.update((self._pool.submit(collect_shards), None) for _ in range(self.procs))

    def _accept(self, batch: ShardBatch) -> Iterator[ShardReport]:
        for report in batch.reports:
            if self._held.pop(report.shard_id, None) is not None:
                yield report
        for shard_id, reason in batch.failed:  # a bug in a shard must not stop the run
            shard = self._held.pop(shard_id, None)
            if shard is not None:
                report = self._retry_or_fail(shard, reason)
                if report is not None:
                    yield report

    def _after_death(self, alone: bool) -> Iterator[ShardReport]:
        held = list(self._held.values())
        self._held.clear()
        if alone and len(held) == 1:  # it ran by itself, so it is the one that killed its worker
            report = self._retry_or_fail(held[0], "worker process died")
            if report is not None:
                yield report
        else:
            self._suspects.extend(held)

    def _retry_or_fail(self, shard: Shard, reason: str) -> ShardReport | None:
        self._failures[shard.shard_id] = tries = self._failures.get(shard.shard_id, 0) + 1
        if tries < self.max_attempts:
            self._suspects.append(shard)
            return None
        return failed_report(shard, f"{reason} (shard tried {tries} times)")

    def _new_pool(self) -> ProcessPoolExecutor:
        # One host table per run. A rebuilt pool follows the death of a worker, and the
        # old workers are all gone by now: their slots come back before new ones start.
        if self._hosts is None and supported():
            self._hosts = HostTable.create(self.procs)
        elif self._hosts is not None:
            self._hosts.reclaim()
        handle = self._hosts.handle if self._hosts is not None else None
        return ProcessPoolExecutor(
            self.procs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(handle,),
        )

    def _drop_host_table(self) -> None:
        hosts, self._hosts = self._hosts, None
        if hosts is not None:
            hosts.destroy()

    def shutdown(self) -> None:
        """Stop at once: running shards are abandoned (they have committed nothing)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The public API would wait for running shards to finish; abandoning them is safe
        # because a shard commits nothing until the parent writes its report.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=5)


EXECUTORS = ("local", "ray")


def make_executor(name: str, *, procs: int | None = None, ray_address: str | None = None) -> ShardExecutor:
    """The executor called ``name``: ``local`` (the default) or ``ray`` (needs ``pipeline[ray]``)."""
    if name == "local":
        if ray_address is not None:
            raise UsageError("--ray-address needs --executor ray")
        return LocalExecutor(procs or default_procs())
    if name == "ray":
        from pipeline.ray_executor import RayExecutor  # the only module that imports ray

        return RayExecutor(address=ray_address, num_cpus=procs)
    raise UsageError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
