"""Finished rows into the catalog: one transaction every half second, with the done marks it completes."""

from __future__ import annotations

import time

from pipeline.catalog import Catalog
from pipeline.dataset.writer import DatasetWriter
from pipeline.errors import PipelineError
from pipeline.models import ItemResult, ShardDone, Status
from pipeline.runner.progress import Progress, ProgressCallback, count_items
from pipeline.schedule.tracker import ShardTracker

# Finished rows are committed at least this often, and at once when this many are waiting:
# a kill loses at most the rows finished in the last half second (plus those in flight).
COMMIT_EVERY_S = 0.5
COMMIT_ROWS = 2000


class Commits:
    """Finished rows on their way to the catalog: one transaction every ``COMMIT_EVERY_S``,
    holding the done marks of the shards it completes; progress is counted per commit."""

    def __init__(
        self,
        catalog: Catalog,
        tracker: ShardTracker,
        extras: tuple[str, ...],
        progress: Progress,
        on_progress: ProgressCallback | None,
        dataset: DatasetWriter | None = None,
    ) -> None:
        self.catalog, self.tracker, self.extras = catalog, tracker, extras
        self.progress, self.on_progress, self.dataset = progress, on_progress, dataset
        self._rows: list[tuple[int, ItemResult]] = []
        self._done: list[ShardDone] = []
        self._last = time.monotonic()

    def add(self, items: list[ItemResult], worker_pid: int | None = None) -> None:
        self._rows.extend((self.tracker.shard_of(item), item) for item in items)
        self._done.extend(self.tracker.finish(items, worker_pid))

    def add_done(self, shard: ShardDone) -> None:
        self._done.append(shard)

    def flush(self, *, due_only: bool = False) -> None:
        now = time.monotonic()
        if due_only and len(self._rows) < COMMIT_ROWS and now - self._last < COMMIT_EVERY_S:
            return
        self._last = now
        if not self._rows and not self._done:
            return
        rows, done = self._rows, self._done
        items = [item for _, item in rows]
        self.catalog.write_rows(rows, done, extra_columns=self.extras + _jsonl_extras(items, self.extras))
        self._rows, self._done = [], []
        if self.dataset is not None:  # after the commit: a sample is always a catalog row
            self.dataset.add(item.row for item in items if item.status is Status.OK)
        count_items(self.progress, items, len(done))
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except (PipelineError, OSError):
            pass  # the error that stopped the run is the one to report


def _jsonl_extras(items: list[ItemResult], known: tuple[str, ...]) -> tuple[str, ...]:
    if known:
        return ()
    return tuple(dict.fromkeys(name for item in items for name, _ in item.extra))
