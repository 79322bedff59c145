"""One shard, inside one worker process: fetch every row, process every image, report.

``run_shard(shard, config)`` is a plain picklable function of plain picklable arguments that
returns metadata only, so any executor can run it unchanged: the local process pool, Ray,
or a static partition on another machine.

Inside, one asyncio loop with one aiohttp session (both kept for the process's next shard)
downloads the shard's unique sources (up to ``--concurrency`` in flight, paced by
admission.py) and hands each body to a small thread pool for the Pillow work. Pillow
releases the GIL while it decodes, resizes and encodes to a file, so the loop keeps
downloading while the threads use the core (measured: ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import signal
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.admission import Admission
from pipeline.config import FetchOptions, ProcessOptions, RunConfig
from pipeline.errors import ErrorClass, ItemError, StorageError
from pipeline.models import FetchResult, ImageInfo, ItemResult, ManifestRow, Shard, ShardReport, Status
from pipeline.store import Store, open_store

# aiohttp, Pillow and numpy are imported by the functions that run in the worker, not here:
# the parent imports this module only to name ``run_shard``, and importing them there cost
# ~0.3 s of start-up and ~30 MB of its RSS (measured, bench/README.md).

_cpu_pools: dict[int, ThreadPoolExecutor] = {}  # one per process, reused by every shard it runs
_learned_cap: dict[int, int] = {}  # --concurrency -> in-flight cap the last shard reached
# One event loop and one aiohttp session per process, kept from shard to shard: a new
# session per shard reconnected to every host (8,192 connects for 16,000 URLs in bench's
# W1; connect + SSL-context set-up were ~6% of the worker's CPU in the profile).
_runner: asyncio.Runner | None = None
_sessions: dict[FetchOptions, object] = {}


def init_worker() -> None:
    """Pool initializer: the parent owns shutdown, so Ctrl-C must not kill workers mid-write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_shard(shard: Shard, config: RunConfig) -> ShardReport:
    """Fetch and process every row of ``shard``; never raises for a per-item failure.

    Raises ``StorageError`` when OUT cannot be written: every later item would fail too.
    """
    started = time.perf_counter()
    store = open_store(config.out, partition=config.partition)
    pool = _cpu_pool(config.cpu_threads)
    report = _loop().run(_run(shard, config, store, pool))
    report.elapsed_s = time.perf_counter() - started
    report.worker_pid = os.getpid()
    return report


def _loop() -> asyncio.Runner:
    global _runner
    if _runner is None:
        _runner = asyncio.Runner()
        atexit.register(_close_loop)
    return _runner


def _close_loop() -> None:
    """Close the sessions inside their loop (else aiohttp warns about them at exit)."""
    global _runner
    runner, _runner = _runner, None
    if runner is None:
        return
    sessions = list(_sessions.values())
    _sessions.clear()
    try:
        for session in sessions:
            runner.run(session.close())  # type: ignore[attr-defined]
    finally:
        runner.close()


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


@dataclass(slots=True)
class _Outcome:
    """What happened to one unique source; shared by every row that names it."""

    fetch: FetchResult
    image: ImageInfo | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None


async def _run(shard: Shard, config: RunConfig, store: Store, pool: ThreadPoolExecutor) -> ShardReport:
    # A repeated URL is fetched once per shard; every row naming it gets the same outcome.
    sources = list(dict.fromkeys(r.source for r in shard.rows if r.invalid is None))
    concurrency = config.fetch.concurrency
    # Enough bodies per CPU thread to cover a round trip: with 8 the queue ran dry while the
    # next downloads were on their way (W2 at 100 ms: 330 vs 410 images/s at 0 ms); with 32
    # the rates match (390 vs 405-417) for +35 MB of tree RSS (bench/, --procs 2).
    backlog = 32 * max(1, config.cpu_threads)
    limit = Admission(concurrency, backlog, start=_learned_cap.get(concurrency, 2 * backlog))
    session = _session(config.fetch) if any(not _is_local(s) for s in sources) else None
    tasks = [asyncio.ensure_future(_one(source, session, limit, config, store, pool)) for source in sources]
    try:
        outcomes = dict(zip(sources, await asyncio.gather(*tasks)))
    except BaseException:
        # The loop outlives this shard: nothing of it may keep running into the next one.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        _learned_cap[concurrency] = limit.cap
    report = ShardReport(shard.shard_id)
    report.items = [_item(row, outcomes.get(row.source)) for row in shard.rows]
    report.fetched = len(sources)
    report.bytes_downloaded = sum(o.image.bytes for o in outcomes.values() if o.image)
    return report


def _is_local(source: str) -> bool:
    return source.startswith("/")


async def _one(
    source: str,
    session: object,
    limit: Admission,
    config: RunConfig,
    store: Store,
    pool: ThreadPoolExecutor,
) -> _Outcome:
    # Admission bounds both the requests in flight and the bodies waiting for the CPU, so
    # downloading slows exactly when the CPU is the bottleneck (see admission.py).
    await limit.start_download()
    body = None
    try:
        if _is_local(source):
            fetched = await asyncio.to_thread(_read_local, source, config.fetch.max_bytes)
        else:
            from pipeline.fetch import fetch_url

            fetched = await fetch_url(session, source, config.fetch)  # type: ignore[arg-type]
        body = fetched.body
    finally:
        limit.download_done(has_body=body is not None)
    fetched = _without_body(fetched)
    try:
        if fetched.error_class is not None or body is None:
            return _Outcome(fetched, None, fetched.error_class, fetched.error_message)
        work = functools.partial(_process, body, config.process, store)
        image, error_class, message = await asyncio.get_running_loop().run_in_executor(pool, work)
        return _Outcome(fetched, image, error_class, message)
    finally:
        if body is not None:
            limit.processed()


def _without_body(fetched: FetchResult) -> FetchResult:
    return replace(fetched, body=None) if fetched.body is not None else fetched


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
        return None, ErrorClass.INTERNAL, f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"


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
        return FetchResult(path, None, 1, 0, None, None, ErrorClass.INVALID, f"cannot read local file: {exc.strerror}")
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
                ItemResult(row.row, row.key, row.url, Status.FAILED, ErrorClass.INTERNAL, message, extra=row.extra)
            )
    return ShardReport(shard.shard_id, items)
