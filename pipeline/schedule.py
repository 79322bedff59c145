"""Stage 3: rows, not shards, are what workers receive; shards are what the catalog completes.

A shard (``shards.py``: a deterministic range of rows) stays the unit of identity and of
resume. It is no longer the unit that holds a worker: the parent cuts each shard into small
batches (``batches``), workers report every row the moment it ends, and the parent commits
finished rows every second or so, marking a shard done in the transaction that brings its
last row (``ShardTracker``). So one URL that never answers holds one download slot, not a
500-row shard and its place in the window, and a folder of 240 photos (one shard) spreads
over every worker (issue 10: hanging URLs paced a web crawl at ~87 rows/s; one worker did a
whole folder).

A source repeated within a shard stays in one batch, so it is still fetched once per shard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.models import ItemResult, ManifestRow, Shard, ShardDone

# Rows per batch: ~15 ms of a fast worker's work (W1: ~2,000 rows/s a process), so the cost
# of a call (~0.2 ms) is small, and few enough that no worker holds much more than it needs.
BATCH_ROWS = 32


def batch_size(rows: int, procs: int) -> int:
    """``BATCH_ROWS``, or smaller when a shard has too few rows to give every worker several
    batches (a folder of 50 photos is one shard: 50 // 8 = 6 rows a batch at 2 processes)."""
    return max(1, min(BATCH_ROWS, math.ceil(rows / (4 * procs))))


def by_source(rows: Iterable[ManifestRow]) -> dict[str, list[ManifestRow]]:
    """``rows`` grouped by what they fetch, in order of first appearance."""
    groups: dict[str, list[ManifestRow]] = {}
    for row in rows:
        groups.setdefault(row.source, []).append(row)
    return groups


def batches(rows: list[ManifestRow], shard_id: int, size: int) -> Iterator[Shard]:
    """``rows`` (valid ones, of one shard) in batches of about ``size``; every row naming one
    source lands in the same batch, so a worker fetches it once for all of them."""
    batch: list[ManifestRow] = []
    for same in by_source(rows).values():
        if batch and len(batch) + len(same) > size:
            yield Shard(shard_id, tuple(batch))
            batch = []
        batch.extend(same)
    if batch:
        yield Shard(shard_id, tuple(batch))


@dataclass(slots=True)
class _Open:
    """A shard with rows still out: how many, and what its finished rows cost so far."""

    remaining: int
    started: float
    fetched: int = 0
    bytes_downloaded: int = 0
    worker_pid: int | None = None


@dataclass(slots=True)
class ShardTracker:
    """Which shards of this invocation still wait for rows, and which a batch of rows completes."""

    shard_size: int
    _open: dict[int, _Open] = field(default_factory=dict)

    def expect(self, shard: Shard) -> None:
        """``shard``'s rows (all of them, or the part this invocation runs) are on their way."""
        self._open[shard.shard_id] = _Open(len(shard.rows), time.perf_counter())

    def shard_of(self, item: ItemResult) -> int:
        return item.row // self.shard_size

    def finish(self, items: list[ItemResult], worker_pid: int | None = None) -> list[ShardDone]:
        """Count ``items`` in; the shards they complete (to mark done with them)."""
        done = []
        for item in items:
            shard_id = self.shard_of(item)
            entry = self._open.get(shard_id)
            if entry is None:
                continue  # not expected here (cannot happen); the row is still written
            entry.remaining -= 1
            entry.fetched += item.attempts > 0
            entry.bytes_downloaded += item.image.bytes if item.image else 0
            entry.worker_pid = worker_pid or entry.worker_pid
            if entry.remaining == 0:
                del self._open[shard_id]
                elapsed = time.perf_counter() - entry.started
                done.append(ShardDone(shard_id, entry.fetched, entry.bytes_downloaded, elapsed, entry.worker_pid))
        return done

    @property
    def open_shards(self) -> int:
        return len(self._open)


def split(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """``rows`` in two halves by source (a source's rows stay together); used to find the one
    row that kills its worker."""
    groups = list(by_source(rows).values())
    half = max(1, len(groups) // 2)
    return [r for g in groups[:half] for r in g], [r for g in groups[half:] for r in g]
