"""Shards inside one worker process: fetch every row, process every image, report.

``run_shard(shard, config)`` is a plain picklable function of plain picklable arguments that
returns metadata only, so any executor can run it unchanged: the local process pool, Ray,
or a static partition on another machine.

Inside, one asyncio loop with one aiohttp session per process (both kept from shard to
shard) downloads each shard's unique sources (up to ``--concurrency`` in flight, paced by
admission.py) and hands each body to a small thread pool for the Pillow work. Pillow
releases the GIL while it decodes, resizes and encodes to a file, so the loop keeps
downloading while the threads use the core (measured: ARCHITECTURE.md).

The loop runs on a thread of its own, so a process can hold several shards at once:
``feed_shard`` (the local executor's call) returns as soon as the process is about to run
out of rows to start, and the parent sends the next shard while the last downloads of the
previous one are still in flight. One shard at a time paid a round trip of ramp-up and one
of drain per shard: W1 at 100 ms reached 1,766/s instead of 2,500 (bench/README.md).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.admission import Admission
from pipeline.config import FetchOptions, ProcessOptions, RunConfig
from pipeline.errors import ErrorClass, ItemError, PipelineError, StorageError
from pipeline.hostlimit import TableHandle
from pipeline.hostlimit import install as install_host_table
from pipeline.models import FetchResult, ImageInfo, ItemResult, ManifestRow, Shard, ShardReport, Status
from pipeline.store import Store, open_store

# aiohttp, Pillow and numpy are imported by the functions that run in the worker, not here:
# the parent imports this module only to name ``run_shard``, and importing them there cost
# ~0.3 s of start-up and ~30 MB of its RSS (measured, bench/README.md).

# A process asks for its next shard when this few of its rows are still waiting to start a
# download: ~50 ms of work at W1's rate, far more than the ~1 ms the next shard takes to
# arrive (it already waits in the pool's call queue).
LOW_WATER_ROWS = 64
# A collect call that finds nothing running waits this long before answering, so that idle
# processes do not spin with the parent while another process finishes its last shard.
IDLE_COLLECT_S = 0.05

_cpu_pools: dict[int, ThreadPoolExecutor] = {}  # one per process, reused by every shard it runs
# Touched only on the loop thread. One admission per process: shards that overlap share the
# requests in flight and the bodies waiting for the CPU.
_admissions: dict[tuple[int, int], Admission] = {}
# One aiohttp session per process, kept from shard to shard: a new session per shard
# reconnected to every host (8,192 connects for 16,000 URLs in bench's W1; connect +
# SSL-context set-up were ~6% of the worker's CPU in the profile).
_sessions: dict[FetchOptions, object] = {}


@dataclass(slots=True)
class ShardBatch:
    """What ``feed_shard`` and ``collect_shards`` hand back: shards finished since last time."""

    reports: list[ShardReport] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (shard id, why): a bug, retried


def init_worker(handle: TableHandle | None = None) -> None:
    """Pool initializer: the parent owns shutdown, so Ctrl-C must not kill workers mid-write;
    ``handle``: the parent's host table, so that per-host limits hold machine-wide (fetch.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if handle is not None:
        install_host_table(handle)


def run_shard(shard: Shard, config: RunConfig) -> ShardReport:
    """Fetch and process every row of ``shard``; never raises for a per-item failure.

    Raises ``StorageError`` when OUT cannot be written: every later item would fail too.
    """
    return _shard_loop().submit(shard, config, collect=False).result()


def feed_shard(shard: Shard, config: RunConfig, *, wait_all: bool = False) -> ShardBatch:
    """Start ``shard`` here; return once this process needs more rows (or, with
    ``wait_all``, once it has finished everything it holds), with the shards finished so far.

    Raises ``StorageError`` (run-fatal) if any shard of this process met one.
    """
    loop = _shard_loop()
    loop.submit(shard, config, collect=True)
    return loop.take(until_idle=wait_all)


def collect_shards() -> ShardBatch:
    """The shards this process finished since the last call; waits for at least one if any
    is still running here."""
    return _shard_loop().take(until_idle=False, at_least_one=True)


class _ShardLoop:
    """This process's event loop, on a thread of its own, and the shards running on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pipeline-loop", daemon=True)
        self._thread.start()
        self._changed = threading.Condition()
        self._waiting_rows = 0  # rows submitted here whose download has not started yet
        self._running = 0  # collected shards submitted here and not finished
        self._batch = ShardBatch()
        self._fatal: PipelineError | None = None

    def submit(
        self, shard: Shard, config: RunConfig, *, collect: bool
    ) -> concurrent.futures.Future[ShardReport]:
        store = open_store(config.out, partition=config.partition)
        sources = _sources(shard)
        with self._changed:
            self._waiting_rows += len(sources)
            self._running += 1 if collect else 0
        work = _run(shard, sources, config, store, self._download_started)
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        if collect:
            future.add_done_callback(functools.partial(self._finished, shard.shard_id))
        return future

    def take(self, *, until_idle: bool, at_least_one: bool = False) -> ShardBatch:
        with self._changed:
            if at_least_one and not self._running and not self._has_results():
                self._changed.wait(IDLE_COLLECT_S)
            self._changed.wait_for(lambda: self._ready(until_idle, at_least_one))
            if self._fatal is not None:
                raise self._fatal
            batch, self._batch = self._batch, ShardBatch()
            return batch

    def _ready(self, until_idle: bool, at_least_one: bool) -> bool:
        if self._fatal is not None or not self._running:
            return True
        if until_idle:
            return False
        if at_least_one:
            return self._has_results()
        return self._waiting_rows <= LOW_WATER_ROWS

    def _has_results(self) -> bool:
        return bool(self._batch.reports or self._batch.failed)

    def _download_started(self) -> None:
        with self._changed:
            self._waiting_rows -= 1
            if self._waiting_rows == LOW_WATER_ROWS:
                self._changed.notify_all()

    def _finished(self, shard_id: int, future: concurrent.futures.Future[ShardReport]) -> None:
        with self._changed:
            self._running -= 1
            exc = None if future.cancelled() else future.exception()
            if future.cancelled():
                self._batch.failed.append((shard_id, "cancelled"))
            elif isinstance(exc, PipelineError):
                self._fatal = exc
            elif exc is not None:
                self._batch.failed.append((shard_id, f"{type(exc).__name__}: {exc}"))
            else:
                self._batch.reports.append(future.result())
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


_the_loop: _ShardLoop | None = None
_the_loop_lock = threading.Lock()


def _shard_loop() -> _ShardLoop:
    global _the_loop
    with _the_loop_lock:
        if _the_loop is None:
            _the_loop = _ShardLoop()
            atexit.register(_close_shard_loop)
        return _the_loop


def _close_shard_loop() -> None:
    global _the_loop
    with _the_loop_lock:
        loop, _the_loop = _the_loop, None
    if loop is not None:
        loop.close()


def _session(options: FetchOptions) -> object:
    """This process's session for ``options``; created inside the running loop."""
    session = _sessions.get(options)
    if session is None or session.closed:  # type: ignore[attr-defined]
        from pipeline.fetch import make_session

        session = _sessions[options] = make_session(options)
    return session


def _cpu_pool(threads: int) -> ThreadPoolExecutor:
    pool = _cpu_pools.get(threads)
    if pool is None:
        pool = _cpu_pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="pipeline-cpu")
    return pool


def _admission(config: RunConfig) -> Admission:
    # At least 32 bodies per CPU thread (more when bodies are cheap, see admission.py): with
    # 8 the queue ran dry while the next downloads were on their way (W2 at 100 ms: 330 vs
    # 410 images/s at 0 ms); with 32 the rates match (390 vs 405-417) for +35 MB of tree RSS.
    threads = max(1, config.cpu_threads)
    key = (config.fetch.concurrency, threads)
    limit = _admissions.get(key)
    if limit is None:
        limit = _admissions[key] = Admission(key[0], 32 * threads, start=64 * threads, threads=threads)
    return limit


def _sources(shard: Shard) -> list[str]:
    # A repeated URL is fetched once per shard; every row naming it gets the same outcome.
    return list(dict.fromkeys(r.source for r in shard.rows if r.invalid is None))


@dataclass(slots=True)
class _Outcome:
    """What happened to one unique source; shared by every row that names it."""

    fetch: FetchResult
    image: ImageInfo | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None


async def _run(
    shard: Shard, sources: list[str], config: RunConfig, store: Store, on_started: Callable[[], None]
) -> ShardReport:
    started = time.perf_counter()
    pool = _cpu_pool(config.cpu_threads)
    limit = _admission(config)
    session = _session(config.fetch) if any(not _is_local(s) for s in sources) else None
    one = functools.partial(_one, session=session, limit=limit, config=config, store=store, pool=pool)
    tasks = [asyncio.ensure_future(one(source, on_started)) for source in sources]
    try:
        outcomes = dict(zip(sources, await asyncio.gather(*tasks)))
    except BaseException:
        # The loop outlives this shard: nothing of it may keep running into the next one.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    report = ShardReport(shard.shard_id)
    report.items = [_item(row, outcomes.get(row.source)) for row in shard.rows]
    report.fetched = len(sources)
    report.bytes_downloaded = sum(o.image.bytes for o in outcomes.values() if o.image)
    report.elapsed_s = time.perf_counter() - started
    report.worker_pid = os.getpid()
    return report


def _is_local(source: str) -> bool:
    return source.startswith("/")


async def _one(
    source: str,
    on_started: Callable[[], None],
    *,
    session: object,
    limit: Admission,
    config: RunConfig,
    store: Store,
    pool: ThreadPoolExecutor,
) -> _Outcome:
    # Admission bounds both the requests in flight and the bodies waiting for the CPU, so
    # downloading slows exactly when the CPU is the bottleneck (see admission.py).
    await limit.start_download()
    on_started()
    body = None
    started = time.perf_counter()
    try:
        if _is_local(source):
            fetched = await asyncio.to_thread(_read_local, source, config.fetch.max_bytes)
        else:
            from pipeline.fetch import fetch_url

            fetched = await fetch_url(session, source, config.fetch)  # type: ignore[arg-type]
        body = fetched.body
    finally:
        limit.download_done(has_body=body is not None, seconds=time.perf_counter() - started)
    fetched = _without_body(fetched)
    cpu_s: float | None = None
    try:
        if fetched.error_class is not None or body is None:
            return _Outcome(fetched, None, fetched.error_class, fetched.error_message)
        work = functools.partial(_process_timed, body, config.process, store)
        (image, error_class, message), cpu_s = await asyncio.get_running_loop().run_in_executor(pool, work)
        return _Outcome(fetched, image, error_class, message)
    finally:
        if body is not None:
            limit.processed(cpu_s)


def _without_body(fetched: FetchResult) -> FetchResult:
    return replace(fetched, body=None) if fetched.body is not None else fetched


def _process_timed(
    body: bytes, options: ProcessOptions, store: Store
) -> tuple[tuple[ImageInfo | None, ErrorClass | None, str | None], float]:
    """``_process`` and how long it took on its thread (admission sizes the backlog by it)."""
    started = time.perf_counter()
    result = _process(body, options, store)
    return result, time.perf_counter() - started


def _process(
    body: bytes, options: ProcessOptions, store: Store
) -> tuple[ImageInfo | None, ErrorClass | None, str | None]:
    """The CPU stage's edge: per-item failures become data here."""
    from pipeline.process import process_image

    try:
        return process_image(body, options=options, store=store), None, None
    except ItemError as exc:
        return None, exc.error_class, exc.message
    except StorageError:
        raise  # OUT is unwritable: fatal for the run, not for this item
    except MemoryError:
        return None, ErrorClass.TOO_MANY_PIXELS, "out of memory while decoding"
    except Exception as exc:  # noqa: BLE001 - one bad image must not take its shard down
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return (
            None,
            ErrorClass.INTERNAL,
            f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})",
        )


def _read_local(path: str, max_bytes: int) -> FetchResult:
    """The local-file twin of ``fetch_url`` (paths were checked against --local-root)."""
    started = time.perf_counter()
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            message = f"file of {size} bytes is larger than --max-bytes {max_bytes}"
            return FetchResult(path, None, 1, 0, None, None, ErrorClass.TOO_LARGE, message)
        with open(path, "rb") as f:
            body = f.read()
    except OSError as exc:
        return FetchResult(
            path, None, 1, 0, None, None, ErrorClass.INVALID, f"cannot read local file: {exc.strerror}"
        )
    elapsed = (time.perf_counter() - started) * 1000
    return FetchResult(Path(path).as_uri(), None, 1, 0, None, body, elapsed_ms=elapsed)


def _status(error_class: ErrorClass | None) -> Status:
    if error_class is None:
        return Status.OK
    if error_class is ErrorClass.OPTED_OUT:
        return Status.OPTED_OUT
    return Status.FAILED


def _item(row: ManifestRow, outcome: _Outcome | None) -> ItemResult:
    if row.invalid is not None or outcome is None:
        return ItemResult(
            row.row, row.key, row.url, Status.INVALID, ErrorClass.INVALID,
            f"line {row.line}: {row.invalid}", extra=row.extra,
        )  # fmt: skip
    f = outcome.fetch
    return ItemResult(
        row=row.row,
        key=row.key,
        url=row.url,
        status=_status(outcome.error_class),
        error_class=outcome.error_class,
        error_message=outcome.error_message,
        final_url=f.final_url,
        http_status=f.http_status,
        attempts=f.attempts,
        redirects=f.redirects,
        mime=f.mime,
        image=outcome.image,
        fetch_ms=f.elapsed_ms,
        extra=row.extra,
    )


def failed_report(shard: Shard, message: str) -> ShardReport:
    """Every fetchable row of ``shard`` recorded as ``internal`` (e.g. its worker kept dying)."""
    items = []
    for row in shard.rows:
        if row.invalid is not None:
            items.append(_item(row, None))
        else:
            items.append(
                ItemResult(
                    row.row, row.key, row.url, Status.FAILED, ErrorClass.INTERNAL, message, extra=row.extra
                )
            )
    return ShardReport(shard.shard_id, items)
