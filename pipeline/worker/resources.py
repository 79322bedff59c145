"""Per-process resources kept for the whole run: the session, CPU threads, admission, the store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.config import FetchOptions, RunConfig
from pipeline.net.admission import Admission
from pipeline.store.base import ContentStore
from pipeline.store.local import open_store

# Bodies waiting for the CPU stage, at most, in bytes per CPU thread: 32 bodies of a web
# crawl's PNGs (1-2 MB each) held ~50 MB per worker on top of their decodes (issue 10's
# memory target: 350 MB for the tree at --procs 2). 24 MB is still 90 of bench's 264 KB JPEGs.
BACKLOG_BYTES = 24 * 1024 * 1024

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
_stores: dict[tuple[Path | str, str | None], ContentStore] = {}


def _store(config: RunConfig) -> ContentStore:
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
