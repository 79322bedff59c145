"""One source of a batch, start to finish: admitted, fetched or read, processed, its outcome reported."""

from __future__ import annotations

import asyncio
import functools
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.config import ProcessOptions, RunConfig
from pipeline.errors import ErrorClass, ItemError, PipelineError, StorageError
from pipeline.memory import trim_now_and_then
from pipeline.models import FetchResult, ImageInfo, ItemResult, ManifestRow, Shard
from pipeline.net.admission import Admission
from pipeline.schedule.batches import by_source as group_by_source
from pipeline.store.base import ContentStore
from pipeline.store.named import NamedStore
from pipeline.worker.items import _item, _SourceOutcome, failed_items
from pipeline.worker.resources import _admission, _cpu_pool, _session

# aiohttp, Pillow and numpy are imported by the functions that run in the worker, not here:
# the parent imports this package only to name ``feed_rows`` and the rest (protocol.py), and
# importing them there cost ~0.3 s of start-up and ~30 MB of its RSS (measured, bench/README.md).


@dataclass(frozen=True, slots=True)
class _Hooks:
    """How ``_run`` tells its process about progress (called on the loop thread)."""

    started: Callable[[], None]  # a source's download starts
    finished: Callable[[list[ItemResult]], None]  # a source's rows end


def _by_source(batch: Shard) -> dict[str, list[ManifestRow]]:
    # A repeated URL is fetched once per batch; every row naming it gets the same outcome
    # (the parent keeps a shard's rows of one source in one batch: schedule/batches.py).
    return group_by_source(row for row in batch.rows if row.invalid is None)


async def _run(by_source: dict[str, list[ManifestRow]], config: RunConfig, store: ContentStore, hooks: _Hooks) -> None:
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
    store: ContentStore,
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
    store: ContentStore,
    pool: ThreadPoolExecutor,
) -> _SourceOutcome:
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
                return _SourceOutcome(fetched, None, fetched.error_class, fetched.error_message)
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
    return _SourceOutcome(fetched, image, error_class, message, named)


def _without_body(fetched: FetchResult) -> FetchResult:
    return replace(fetched, body=None) if fetched.body is not None else fetched


def _process_timed(
    body: bytes, options: ProcessOptions, store: ContentStore
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
    body: bytes, options: ProcessOptions, store: ContentStore
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
