"""Fit a run to the operating system's limits before any worker starts.

Open files: every request in flight holds a socket, so ``--concurrency 500`` under a
default ``ulimit -n`` of 256 (macOS) or a container's 64 would end in a storm of EMFILE
("Too many open files") failures that look like network errors. Instead we raise the soft
limit as far as the hard limit allows (workers spawned afterwards inherit it) and, if that
is not enough, lower ``--concurrency`` with a warning on the ``pipeline`` logger.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from pipeline.config import RunConfig

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE to fit
    resource = None  # type: ignore[assignment]

log = logging.getLogger("pipeline")

# Descriptors a worker holds besides its sockets: stdio, pipes to the parent, the event
# loop's selector and self-pipe, the resolver's threads, shared libraries opened late, and
# one file being written per CPU thread (counted separately). 40, not 32: with
# --cpu-threads 1 and 30 sockets a worker peaked at 61 descriptors (issue 3, measured).
WORKER_BASE_FDS = 40


def open_files_needed(config: RunConfig) -> int:
    return WORKER_BASE_FDS + config.fetch.concurrency + 2 * config.cpu_threads


def fit_open_files(config: RunConfig) -> RunConfig:
    """``config`` unchanged if each worker can open what it needs, else with less concurrency."""
    if resource is None:
        return config
    need = open_files_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return config
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    if soft >= need:
        return config
    concurrency = max(1, soft - WORKER_BASE_FDS - 2 * config.cpu_threads)
    log.warning(
        "open-file limit is %d (ulimit -n); --concurrency lowered from %d to %d per process",
        soft, config.fetch.concurrency, concurrency,
    )  # fmt: skip
    fetch = replace(config.fetch, concurrency=concurrency, per_host=min(config.fetch.per_host, concurrency))
    return replace(config, fetch=fetch)
