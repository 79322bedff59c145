"""What the commands print: the progress line, a run's summary, counts, library warnings."""

from __future__ import annotations

import logging
import sys
import time

import click

from pipeline.runner import Progress, RunSummary


class _EchoWarnings(logging.Handler):
    """Library warnings (logger ``pipeline``) as ``Warning: …`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Warning: {record.getMessage()}", err=True)


_WARNINGS = _EchoWarnings(logging.WARNING)


def show_library_warnings() -> None:
    logger = logging.getLogger("pipeline")
    if _WARNINGS not in logger.handlers:
        logger.addHandler(_WARNINGS)
        logger.propagate = False


class ProgressReporter:
    """A live line on a terminal; a plain line every ``every`` seconds otherwise (logs, CI)."""

    def __init__(self, every: float = 10.0) -> None:
        self.tty = sys.stderr.isatty()
        self.every = every
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < self.every:
            return
        self.last = now
        line = (
            f"{p.rows:,} rows  {p.rate():,.0f} rows/s  {p.bytes / 1e6 / max(p.elapsed, 1e-9):,.1f} MB/s  "
            f"ok {p.ok:,}  failed {p.failed:,}  shards {p.shards_done + p.shards_skipped:,}"
        )
        if p.fraction is not None:
            line = f"{_bar(p.fraction)} {p.fraction:4.0%}  {_eta(p)}  {line}"
        click.echo(f"\r{line}\x1b[K" if self.tty else line, err=True, nl=not self.tty)

    def finish(self) -> None:
        if self.tty and self.last:
            click.echo("", err=True)


def _bar(fraction: float, width: int = 24) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _eta(p: Progress) -> str:
    rate = p.rate()
    if rate <= 0 or p.rows_total is None:
        return "ETA ?"
    left = max(0, p.rows_total - p.rows_before - p.rows) / rate
    return f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def print_summary(s: RunSummary) -> None:
    p = s.this_run
    click.echo(
        f"Done: {p.rows:,} rows in {p.elapsed:,.1f} s ({p.rate():,.0f} rows/s)"
        + (f", {p.shards_skipped:,} shards already done" if p.shards_skipped else "")
        + f". Catalog: {s.catalog} ({s.rows:,} rows, shards {s.shards_done:,}/{s.shards_total or '?'})"
    )
    print_counts(s.by_status, s.by_error)


def print_counts(by_status: dict[str, int], by_error: dict[str, int]) -> None:
    for name, count in sorted(by_status.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {name:<12} {count:>10,}")
    if by_error:
        click.echo("  by error class:")
        for name, count in by_error.items():
            click.echo(f"    {name:<14} {count:>8,}")
