"""The counts a run reports: ``Progress`` while it runs (after every commit), ``RunSummary`` at its end.

One name per count: ``ok`` rows have status ``ok``; ``not_ok`` rows are every other status
(``failed``, ``invalid``, ``opted_out``); ``failure_rate`` is the share of ``FAILURES``
(``failed`` or ``invalid``: an opted-out row was honoured, not failed), what
``--max-failure-rate`` bounds. ``Status.FAILED`` itself is the status of a row that was
tried and could not be fetched or processed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.models import ItemResult, Status


@dataclass(slots=True)
class Progress:
    """Counts for this invocation, updated after every commit (every ~0.5 s)."""

    rows: int = 0
    rows_before: int = 0  # committed by earlier runs of the same manifest
    rows_total: int | None = None  # estimated in the background, for a progress bar
    by_status: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    shards_done: int = 0
    shards_skipped: int = 0  # already done by an earlier, interrupted run
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def ok(self) -> int:
        return self.by_status[Status.OK.value]

    @property
    def not_ok(self) -> int:
        """Rows of any status but ``ok``: failed, invalid or opted out."""
        return self.rows - self.ok

    @property
    def fraction(self) -> float | None:
        """Share of the manifest in the catalog, once the total is known."""
        if not self.rows_total:
            return None
        return min(1.0, (self.rows_before + self.rows) / self.rows_total)

    def rate(self) -> float:
        """Rows per second over this invocation."""
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RunSummary:
    out: Path | str
    catalog: Path
    rows: int  # rows in the catalog (this run and earlier ones)
    by_status: dict[str, int]
    by_error: dict[str, int]
    shards_done: int
    shards_total: int | None
    this_run: Progress
    failure_rate: float  # share of the catalog's rows whose status is in FAILURES

    @property
    def complete(self) -> bool:
        return self.shards_total is not None and self.shards_done >= self.shards_total


ProgressCallback = Callable[[Progress], None]

# A row the manifest made unusable failed just as surely as a 404.
FAILURES = frozenset({Status.FAILED.value, Status.INVALID.value})


def failure_rate(by_status: dict[str, int]) -> float:
    """The share of rows whose status is in ``FAILURES``."""
    rows = sum(by_status.values())
    return sum(n for status, n in by_status.items() if status in FAILURES) / rows if rows else 0.0


def count_items(progress: Progress, items: list[ItemResult], shards_done: int) -> None:
    progress.rows += len(items)
    progress.by_status.update(item.status.value for item in items)
    progress.bytes += sum(item.image.bytes for item in items if item.image)
    progress.shards_done += shards_done
