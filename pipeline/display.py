"""A run's progress for people: a rich bar on a terminal, plain lines in logs (the only rich importer)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from pipeline.runner import Progress

# The fields beside the bar, from the run's own counts (the same numbers as the plain line).
_FIELDS = (
    "{task.fields[rows]} rows  {task.fields[rate]} rows/s  {task.fields[mbps]} MB/s  "
    "[green]ok {task.fields[ok]}[/]  [red]not ok {task.fields[not_ok]}[/]  shards {task.fields[shards]}"
)


class ProgressDisplay:
    """``on_progress`` for ``pipeline run``: on a terminal (stderr), a live bar with the share
    done, ETA, rows/s, MB/s, ok / not ok and shards (``rich.progress``); otherwise a plain line
    every ``every`` seconds, as logs and CI want. Use as a context manager: it ends the bar
    (and gives the cursor back) however the run ends."""

    def __init__(self, every: float = 10.0) -> None:
        self.tty = sys.stderr.isatty()
        self.every = every
        self.last = 0.0
        self._bar: Bar | None = None
        self._task: TaskID | None = None

    def __call__(self, p: Progress) -> None:
        if self.tty:
            self._show_bar(p)
            return
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        print(plain_line(p), file=sys.stderr, flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()  # the last state stays on screen, the summary prints below it

    def _show_bar(self, p: Progress) -> None:
        fields = {
            "rows": f"{p.rows:,}",
            "rate": f"{p.rate():,.0f}",
            "mbps": f"{p.bytes / 1e6 / max(p.elapsed, 1e-9):,.1f}",
            "ok": f"{p.ok:,}",
            "not_ok": f"{p.not_ok:,}",
            "shards": f"{p.shards_done + p.shards_skipped:,}",
        }
        if self._bar is None:
            self._bar = Bar(
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn(_FIELDS),
                console=Console(file=sys.stderr),
            )
            # Rows of earlier runs are where the bar starts, not speed: rich's ETA counts
            # only what this invocation adds.
            self._task = self._bar.add_task("run", total=p.rows_total, completed=p.rows_before, **fields)
            self._bar.start()
        assert self._task is not None
        self._bar.update(self._task, total=p.rows_total, completed=p.rows_before + p.rows, **fields)


def plain_line(p: Progress) -> str:
    """One progress line for a log (the text ``pipeline run`` has always printed)."""
    line = (
        f"{p.rows:,} rows  {p.rate():,.0f} rows/s  {p.bytes / 1e6 / max(p.elapsed, 1e-9):,.1f} MB/s  "
        f"ok {p.ok:,}  failed {p.not_ok:,}  shards {p.shards_done + p.shards_skipped:,}"
    )
    if p.fraction is not None:
        line = f"{_text_bar(p.fraction)} {p.fraction:4.0%}  {_eta(p)}  {line}"
    return line


def _text_bar(fraction: float, width: int = 24) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _eta(p: Progress) -> str:
    rate = p.rate()
    if rate <= 0 or p.rows_total is None:
        return "ETA ?"
    left = max(0, p.rows_total - p.rows_before - p.rows) / rate
    return f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
