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
from pipeline.models import Shard, ShardReport
from pipeline.worker import failed_report, init_worker, run_shard


class ShardExecutor(Protocol):
    def run(self, shards: Iterable[Shard], config: RunConfig) -> Iterator[ShardReport]: ...


class LocalExecutor:
    """Shards on a ``ProcessPoolExecutor`` of ``procs`` spawned worker processes.

    ``spawn`` rather than fork: the parent may hold SQLite handles, threads and (in Jupyter)
    a running event loop, none of which survive a fork safely.
    """

    def __init__(self, procs: int, *, window: int | None = None, max_attempts: int = 3) -> None:
        self.procs = procs
        self.window = window or 2 * procs
        self.max_attempts = max_attempts
        self._pool: ProcessPoolExecutor | None = None
        self._suspects: list[Shard] = []

    def run(self, shards: Iterable[Shard], config: RunConfig) -> Iterator[ShardReport]:
        source = iter(shards)
        pending: dict[Future[ShardReport], Shard] = {}
        failures: dict[int, int] = {}
        self._suspects = []
        self._pool = self._new_pool()
        try:
            while True:
                self._fill(pending, source, config)
                if not pending:
                    return
                alone = len(pending) == 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    shard = pending.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken = True
                        if alone:  # it ran by itself, so it is the one that killed its worker
                            report = self._retry_or_fail(shard, failures, "worker process died")
                            if report is not None:
                                yield report
                        else:
                            self._suspects.append(shard)
                    except PipelineError:
                        raise  # run-fatal (e.g. disk full): stop scheduling
                    except Exception as exc:  # noqa: BLE001 - a bug in one shard must not stop the run
                        report = self._retry_or_fail(shard, failures, f"{type(exc).__name__}: {exc}")
                        if report is not None:
                            yield report
                if broken:
                    self._suspects.extend(pending.values())
                    pending.clear()
                    self.shutdown()
                    self._pool = self._new_pool()
        finally:
            self.shutdown()

    def _fill(self, pending: dict[Future[ShardReport], Shard], source: Iterator[Shard], config: RunConfig) -> None:
        # A dead worker breaks the whole pool and every shard in it, so after a death the
        # shards that were in flight run one at a time: only then is a death attributable.
        assert self._pool is not None
        if self._suspects:
            if not pending:
                shard = self._suspects.pop()
                pending[self._pool.submit(run_shard, shard, config)] = shard
            return
        while len(pending) < self.window:
            shard = next(source, None)
            if shard is None:
                return
            pending[self._pool.submit(run_shard, shard, config)] = shard

    def _retry_or_fail(self, shard: Shard, failures: dict[int, int], reason: str) -> ShardReport | None:
        failures[shard.shard_id] = tries = failures.get(shard.shard_id, 0) + 1
        if tries < self.max_attempts:
            self._suspects.append(shard)
            return None
        return failed_report(shard, f"{reason} (shard tried {tries} times)")

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.procs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker
        )

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
