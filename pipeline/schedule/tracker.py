"""Shard tracking: which shards still wait for rows, and which a set of finished rows completes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline.models import ItemResult, Shard, ShardDone


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
