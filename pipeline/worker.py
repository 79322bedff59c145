"""Rows inside one worker process: fetch each, process each image, report each as it ends.

Plain picklable functions of plain picklable arguments that return metadata only, so any
process can run them unchanged: ``feed_rows`` / ``collect_rows`` (rows in, rows out as they
end) are what the local process pool and the Ray actors call; ``run_shard(batch, config)``
runs one batch to its end in a single call, for callers that want exactly that.

Inside, one asyncio loop with one aiohttp session per process (both kept for the whole run)
downloads each batch's unique sources (up to ``--concurrency`` in flight, paced by
admission.py) and hands each body to a small thread pool for the Pillow work. Pillow
releases the GIL while it decodes, resizes and encodes to a file, so the loop keeps
downloading while the threads use the core (measured: ARCHITECTURE.md).

The loop runs on a thread of its own, so a process holds many batches at once and the
pool's call returns as soon as the process is about to run out of rows to start: every
process pulls work at its own pace, and a row waiting on a silent server holds one download
slot, nothing more (issue 10; ARCHITECTURE.md, "Rows, not shards, hold the machine").
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import math
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.config import FetchOptions, ProcessOptions, RunConfig
from pipeline.errors import ErrorClass, ItemError, PipelineError, StorageError
from pipeline.memory import limit_arenas, trim_now_and_then
from pipeline.models import FetchResult, ImageInfo, ItemResult, ManifestRow, Shard, ShardReport, Status
from pipeline.net.admission import Admission
from pipeline.net.hostlimit import install as install_host_table
from pipeline.net.hosttable import TableHandle
from pipeline.schedule.batches import by_source as group_by_source
from pipeline.store import NamedStore, Store, open_store

# aiohttp, Pillow and numpy are imported by the functions that run in the worker, not here:
# the parent imports this module only to name ``run_shard``, and importing them there cost
# ~0.3 s of start-up and ~30 MB of its RSS (measured, bench/README.md).

# A feed call returns (so the process receives its next batch) once its rows still waiting to
# start would last less than this at its recent rate of starts: the next batch already waits
# in the pool's call queue and arrives in well under a millisecond.
LOW_WATER_S = 0.05
# ... bounded so that a fast worker (W1: ~2,000 starts/s) keeps a few dozen rows ready and a
# slow one (12 MP photos from a folder: ~15/s) holds only a couple: a process that holds many
# rows of slow work at the end of a run is the whole tail (issue 10: one worker per folder).
LOW_WATER_ROWS = (2, 64)
# Bodies waiting for the CPU stage, at most, in bytes per CPU thread: 32 bodies of a web
# crawl's PNGs (1-2 MB each) held ~50 MB per worker on top of their decodes (issue 10's
# memory target: 350 MB for the tree at --procs 2). 24 MB is still 90 of bench's 264 KB JPEGs.
BACKLOG_BYTES = 24 * 1024 * 1024
# How often a waiting call looks again (a safety net: the loop thread notifies).
RECHECK_S = 0.25
# A feed call also answers when it has held finished rows this long while no download here
# started: every slot is waiting on the network (silent hosts, read timeouts), and rows that
# finished earlier must reach the catalog (a kill loses only what is in flight) and the
# progress display. A CPU-bound process keeps starting downloads, so this never feeds it
# rows it cannot start (the tail that LOW_WATER_ROWS prevents).
STALLED_S = 1.0
# How long a new process waits for its siblings to start (see ``init_worker``).
START_TIMEOUT_S = 30.0
# A collect call that finds nothing running waits this long before answering, so that idle
# processes do not spin with the parent while another process finishes its last rows.
IDLE_COLLECT_S = 0.05

_cpu_pools: dict[int, ThreadPoolExecutor] = {}  # one per process, reused by every batch it runs
# Touched only on the loop thread. One admission per process and kind of source: batches that
# overlap share the requests in flight and the bodies waiting for the CPU.
_admissions: dict[tuple[int, int, bool], Admission] = {}
# One aiohttp session per process, kept from batch to batch: a new session per shard
# reconnected to every host (8,192 connects for 16,000 URLs in bench's W1; connect +
# SSL-context set-up were ~6% of the worker's CPU in the profile).
_sessions: dict[FetchOptions, object] = {}
# One store per process and OUT, kept from batch to batch: it remembers the folders it made
# (a mkdir saved per file), and an fsspec store would otherwise build a filesystem per batch.
_stores: dict[tuple[Path | str, str | None], Store] = {}


@dataclass(slots=True)
class Finished:
    """What ``feed_rows`` and ``collect_rows`` hand back: the rows this process finished
    since its last answer (any batch, any order), and what they cost."""

    items: list[ItemResult] = field(default_factory=list)
    worker_pid: int = 0


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


@dataclass(frozen=True, slots=True)
class _Hooks:
    """How ``_run`` tells its process about progress (called on the loop thread)."""

    started: Callable[[], None]  # a source's download starts
    finished: Callable[[list[ItemResult]], None]  # a source's rows end


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


def _store(config: RunConfig) -> Store:
    key = (config.out, config.partition)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = open_store(config.out, partition=config.partition)
    return store


def _session(options: FetchOptions) -> object:
    """This process's session for ``options``; created inside the running loop."""
    session = _sessions.get(options)
    if session is None or session.closed:  # type: ignore[attr-defined]
        from pipeline.net.session import make_session

        session = _sessions[options] = make_session(options)
    return session


def _cpu_pool(threads: int) -> ThreadPoolExecutor:
    pool = _cpu_pools.get(threads)
    if pool is None:
        pool = _cpu_pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="pipeline-cpu")
    return pool


def _admission(config: RunConfig, local: bool) -> Admission:
    # At least 32 bodies per CPU thread for downloads (more when bodies are cheap, see
    # admission.py): with 8 the queue ran dry while the next downloads were on their way (W2
    # at 100 ms: 330 vs 410 images/s at 0 ms); with 32 the rates match (390 vs 405-417) for
    # +35 MB of tree RSS. A local file arrives in a millisecond, so two per thread keep the
    # CPU fed; more would only be rows held by this process at the end of a run (a folder of
    # 12 MP photos: 32 of them are 2 s of work the other process could have done).
    threads = max(1, config.cpu_threads)
    key = (config.fetch.concurrency, threads, local)
    limit = _admissions.get(key)
    if limit is None:
        floor = (2 if local else 32) * threads
        limit = _admissions[key] = Admission(
            key[0], floor, start=64 * threads, threads=threads, max_backlog_bytes=BACKLOG_BYTES * threads
        )
    return limit


def _by_source(batch: Shard) -> dict[str, list[ManifestRow]]:
    # A repeated URL is fetched once per batch; every row naming it gets the same outcome
    # (the parent keeps a shard's rows of one source in one batch: schedule.py).
    return group_by_source(row for row in batch.rows if row.invalid is None)


@dataclass(slots=True)
class _Outcome:
    """What happened to one unique source; shared by every row that names it."""

    fetch: FetchResult
    image: ImageInfo | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None
    # --layout mirror|key: each thumbnail path of ``image`` (the first row's name) → the
    # paths of every row of the source, in row order (NamedStore.paths).
    named: dict[str, list[str]] | None = None

    def image_of(self, index: int) -> ImageInfo | None:
        """The image as the source's ``index``-th row sees it: its own thumbnail names."""
        if self.image is None or not self.named:
            return self.image
        named = self.named
        thumbs = tuple(replace(t, path=named[t.path][index]) if t.path in named else t for t in self.image.thumbnails)
        return replace(self.image, thumbnails=thumbs)


async def _run(by_source: dict[str, list[ManifestRow]], config: RunConfig, store: Store, hooks: _Hooks) -> None:
    try:
        pool = _cpu_pool(config.cpu_threads)
        session = _session(config.fetch) if any(not _is_local(s) for s in by_source) else None
    except Exception as exc:  # noqa: BLE001 - a bug setting up: every row says so, none is lost
        for rows in by_source.values():
            hooks.started()
            hooks.finished(failed_items(rows, f"{type(exc).__name__}: {exc} ({_where(exc)})"))
        return
    tasks = [
        asyncio.ensure_future(_row(source, rows, hooks, session=session, config=config, store=store, pool=pool))
        for source, rows in by_source.items()
    ]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # The loop outlives this batch: nothing of it may keep running into the next one.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _row(
    source: str,
    rows: list[ManifestRow],
    hooks: _Hooks,
    *,
    session: object,
    config: RunConfig,
    store: Store,
    pool: ThreadPoolExecutor,
) -> None:
    """One source, start to finish, reported the moment it ends (never raises for the item)."""
    limit = _admission(config, _is_local(source))
    try:
        names = [row.name for row in rows]
        if all(names):  # --layout mirror|key: the thumbnails go where the rows' names say
            store = NamedStore(store, names)  # type: ignore[arg-type]
        outcome = await _one(source, hooks.started, session=session, limit=limit, config=config, store=store, pool=pool)
    except PipelineError:
        raise  # run-fatal (OUT unwritable): the parent stops the run
    except Exception as exc:  # noqa: BLE001 - a bug on one row must not take its batch down
        message = f"{type(exc).__name__}: {exc} ({_where(exc)})"
        hooks.finished(failed_items(rows, message))
        return
    hooks.finished([_item(row, outcome, index) for index, row in enumerate(rows)])


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
    slept = 0.0

    async def sleep(seconds: float) -> None:
        # Backoff and Retry-After waits give the download slot back meanwhile (issue 11), and
        # are not download time: admission sizes the CPU backlog by how long bodies take.
        nonlocal slept
        since = time.perf_counter()
        try:
            await limit.sleep_outside(seconds)
        finally:
            slept += time.perf_counter() - since

    # A downloaded body stays counted against --body-budget until the CPU stage is done
    # with it: the budget bounds bodies in memory, not only those still arriving.
    lease = None
    try:
        try:
            if _is_local(source):
                fetched = await asyncio.to_thread(_read_local, source, config.fetch.max_bytes)
            else:
                from pipeline.net.budget import body_lease
                from pipeline.net.fetch import fetch_url

                lease = body_lease(session)  # type: ignore[arg-type]
                fetched = await fetch_url(
                    session,  # type: ignore[arg-type]
                    source,
                    config.fetch,
                    sleep=sleep,
                    lease=lease,
                )
            body = fetched.body
        finally:
            seconds = time.perf_counter() - started - slept
            limit.download_done(has_body=body is not None, seconds=seconds, size=len(body or b""))
        fetched = _without_body(fetched)
        cpu_s: float | None = None
        try:
            if fetched.error_class is not None or body is None:
                return _Outcome(fetched, None, fetched.error_class, fetched.error_message)
            work = functools.partial(_process_timed, body, config.process, store)
            loop = asyncio.get_running_loop()
            (image, error_class, message), cpu_s, uploads = await loop.run_in_executor(pool, work)
        finally:
            if body is not None:
                limit.processed(cpu_s, len(body))
    finally:
        if lease is not None:
            lease.close()
    body = None
    if uploads is not None:  # an object store uploads off the image thread: the row waits here
        await asyncio.wrap_future(uploads)
    named = store.paths if isinstance(store, NamedStore) else None
    return _Outcome(fetched, image, error_class, message, named)


def _without_body(fetched: FetchResult) -> FetchResult:
    return replace(fetched, body=None) if fetched.body is not None else fetched


def _process_timed(
    body: bytes, options: ProcessOptions, store: Store
) -> tuple[tuple[ImageInfo | None, ErrorClass | None, str | None], float, Future[None] | None]:
    """``_process``, how long it took on its thread (admission sizes the backlog by it), and
    its uploads still under way (a row is reported once its files are in place)."""
    started = time.perf_counter()
    try:
        result = _process(body, options, store)
    finally:
        uploads = store.uploads()  # this thread's writes: also after a failure, for the next image
    elapsed = time.perf_counter() - started
    del body  # the caller's reference goes when this returns; the decode's memory already went
    trim_now_and_then()
    return result, elapsed, uploads


def _process(
    body: bytes, options: ProcessOptions, store: Store
) -> tuple[ImageInfo | None, ErrorClass | None, str | None]:
    """The CPU stage's edge: per-item failures become data here."""
    from pipeline.image.process import process_image

    try:
        return process_image(body, options=options, store=store), None, None
    except ItemError as exc:
        return None, exc.error_class, exc.message
    except StorageError:
        raise  # OUT is unwritable: fatal for the run, not for this item
    except MemoryError as exc:
        # This process ran out, not the image's fault (--max-pixels is checked from the header
        # before decoding): a bug-like failure, worth a retry with --retry-failed.
        detail = f": {exc}" if str(exc) else ""
        message = f"MemoryError: out of memory while processing the image{detail} ({_where(exc)})"
        return None, ErrorClass.INTERNAL, message
    except Exception as exc:  # noqa: BLE001 - one bad image must not take its batch down
        return None, ErrorClass.INTERNAL, f"{type(exc).__name__}: {exc} ({_where(exc)})"


def _where(exc: BaseException) -> str:
    """``file.py:123`` where ``exc`` was raised, for the bug report."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


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
    if error_class is ErrorClass.INVALID:
        # One rule (README, "status"): the class `invalid` is always the status `invalid`,
        # the row's URL or local path is unusable, whether the manifest reader saw it ("no such
        # local file") or the worker did (the file vanished, is a directory, cannot be read;
        # a URL aiohttp refuses).
        return Status.INVALID
    if error_class is ErrorClass.OPTED_OUT:
        return Status.OPTED_OUT
    return Status.FAILED


def _item(row: ManifestRow, outcome: _Outcome | None, index: int = 0) -> ItemResult:
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
        image=outcome.image_of(index),
        fetch_ms=f.elapsed_ms,
        extra=row.extra,
    )


def invalid_item(row: ManifestRow) -> ItemResult:
    """The catalog row of a manifest row that was unusable (nothing to fetch)."""
    return _item(row, None)


def failed_items(rows: Iterable[ManifestRow], message: str) -> list[ItemResult]:
    """``rows`` recorded as ``internal`` failures (e.g. their worker kept dying); invalid rows
    keep their own reason."""
    return [
        _item(row, None)
        if row.invalid is not None
        else ItemResult(row.row, row.key, row.url, Status.FAILED, ErrorClass.INTERNAL, message, extra=row.extra)
        for row in rows
    ]
