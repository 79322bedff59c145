"""What the commands print: a run's summary, counts, library warnings (the progress: pipeline/display.py)."""

from __future__ import annotations

import logging

import click

from pipeline.runner import RunSummary


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
