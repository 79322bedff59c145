"""Batches: a shard's rows cut into small batches for the workers, a source's rows kept together.

A shard (``shards.py``: a deterministic range of rows) stays the unit of identity and of
resume. It is no longer the unit that holds a worker: the parent cuts each shard into small
batches (``batches``), workers report every row the moment it ends, and the parent commits
finished rows every second or so, marking a shard done in the transaction that brings its
last row (``tracker.ShardTracker``). So one URL that never answers holds one download slot, not a
500-row shard and its place in the window, and a folder of 240 photos (one shard) spreads
over every worker (issue 10: hanging URLs paced a web crawl at ~87 rows/s; one worker did a
whole folder).

A source repeated within a shard stays in one batch, so it is still fetched once per shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from pipeline.models import ManifestRow, Shard

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


def split(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """``rows`` in two halves by source (a source's rows stay together); used to find the one
    row that kills its worker."""
    groups = list(by_source(rows).values())
    half = max(1, len(groups) // 2)
    return [r for g in groups[:half] for r in g], [r for g in groups[half:] for r in g]
