"""The ``pipeline`` command: a thin click client of the ``pipeline`` library.

This is the only module that imports click. Library errors become a one-line
``Error: …`` and an exit code here, in one place:

  0    done
  1    internal error (a bug: please report it with the traceback from --debug)
  2    usage error, unreadable manifest, or a refused resume
  3    done, but the failure rate is above --max-failure-rate
  130  interrupted (Ctrl-C); rerun the same command to resume
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.catalog import CATALOG_NAME, Catalog
from pipeline.config import DEFAULT_USER_AGENT, THUMB_FORMATS, FetchOptions, ProcessOptions, RunConfig
from pipeline.dedup import CSV_NAME as DUPLICATES_CSV
from pipeline.dedup import JSON_NAME as DUPLICATES_JSON
from pipeline.dedup import KEEP, DedupOptions, dedup
from pipeline.dedup_report import write_report
from pipeline.errors import PipelineError, UsageError
from pipeline.export import FORMATS, export
from pipeline.runner import Progress, RunSummary, run

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_FAILURES, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_F, _P = FetchOptions(), ProcessOptions()


def _handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to ``Error: …`` and the documented exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("\nInterrupted: finished shards are saved; rerun the same command to resume.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except UsageError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except PipelineError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("give sizes as whole numbers, e.g. 256,1024") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pipeline")
def main() -> None:
    """Download image URLs on every core into thumbnails, hashes and a resumable catalog.

    \b
      pipeline run manifest.csv --procs 4      # writes ./manifest.pipeline/
      pipeline status manifest.pipeline        # what happened so far
      pipeline export manifest.pipeline --format parquet -o catalog.parquet
    """


@main.command("run")
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output folder. [default: ./<manifest name>.pipeline]")
@click.option("-p", "--procs", type=int, default=None, help="Worker processes. [default: one per core]")
@click.option("--shard-size", type=int, default=500, show_default=True, help="Rows per shard (the unit of resume).")
@click.option("--concurrency", type=int, default=_F.concurrency, show_default=True, help="Requests in flight per process.")
@click.option("--per-host", type=int, default=_F.per_host, show_default=True, help="Connections per host per process.")
@click.option("--cpu-threads", type=int, default=2, show_default=True, help="Image threads per process.")
@click.option("--timeout", type=float, default=_F.timeout, show_default=True, help="Deadline of one request attempt, seconds.")
@click.option("--connect-timeout", type=float, default=_F.connect_timeout, show_default=True, help="Seconds to connect.")
@click.option("--read-timeout", type=float, default=_F.read_timeout, show_default=True, help="Longest silence while reading, seconds.")
@click.option("--retries", type=int, default=_F.retries, show_default=True, help="Extra attempts for transient failures.")
@click.option("--max-retry-after", type=float, default=_F.max_retry_after, show_default=True, help="Cap on a server's Retry-After, seconds.")
@click.option("--max-bytes", type=int, default=_F.max_bytes, show_default=True, help="Largest body accepted.")
@click.option("--max-redirects", type=int, default=_F.max_redirects, show_default=True, help="Redirect hops allowed.")
@click.option("--user-agent", default=DEFAULT_USER_AGENT, show_default=True, help="User-Agent header.")
@click.option("--ignore-opt-out", is_flag=True, help="Fetch even when X-Robots-Tag says noai/noimageai.")
@click.option("--sizes", default="256", show_default=True, callback=_sizes, help="Thumbnail sizes (longest side), comma-separated.")
@click.option("--thumb-format", type=click.Choice(THUMB_FORMATS), default=_P.thumb_format, show_default=True, help="Thumbnail encoding.")
@click.option("--thumb-quality", type=int, default=_P.thumb_quality, show_default=True, help="JPEG/WebP quality of thumbnails.")
@click.option("--keep-originals/--no-keep-originals", default=True, show_default=True, help="Store the downloaded files too.")
@click.option("--max-pixels", type=int, default=_P.max_pixels, show_default=True, help="Larger images fail as too_many_pixels.")
@click.option("--url-column", default="url", show_default=True, help="Manifest column holding the URL.")
@click.option("--key-column", default="key", show_default=True, help="Manifest column holding a row key (optional).")
@click.option("--local-root", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder local paths and file:// rows must lie under. [default: the manifest's folder]")
@click.option("--retry-failed", is_flag=True, help="Fetch again only the rows that failed.")
@click.option("--force", is_flag=True, help="Discard an OUT catalog of another manifest or options and start over.")
@click.option("--max-failure-rate", type=float, default=1.0, show_default=True, help="Exit 3 when more rows than this fraction failed.")
@click.option("-q", "--quiet", is_flag=True, help="No progress, only errors and the exit code.")
@_handle_errors
def run_command(manifest: Path, out: Path | None, quiet: bool, ignore_opt_out: bool, **options: Any) -> None:
    """Download and process every row of MANIFEST.

    MANIFEST is a .csv/.tsv (with a header; a 'url' column, optional 'key', other columns
    kept), .txt (one URL per line), .jsonl or .parquet file, optionally .gz, or a folder of
    images. Rerunning the same command resumes where the last run stopped.
    """
    if options["procs"] is None:
        del options["procs"]
    options["respect_opt_out"] = not ignore_opt_out
    reporter = None if quiet else _ProgressReporter()
    summary = run(manifest, out=out, on_progress=reporter, **options)
    if reporter is not None:
        reporter.finish()
    if not quiet:
        _print_summary(summary)
    if summary.failure_rate > options["max_failure_rate"]:
        click.echo(
            f"Error: {summary.failure_rate:.1%} of rows failed, above --max-failure-rate "
            f"{options['max_failure_rate']:.1%}",
            err=True,
        )
        sys.exit(EXIT_FAILURES)


@main.command("status")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@_handle_errors
def status_command(out: Path, as_json: bool) -> None:
    """Counts by status and error class, and shards done, for the run in OUT."""
    with Catalog(out / CATALOG_NAME, readonly=True) as catalog:
        s = catalog.summary()
    if as_json:
        click.echo(json.dumps({
            "rows": s.rows, "by_status": s.by_status, "by_error": s.by_error,
            "shards_done": s.shards_done, "shards_total": s.shards_total, "bytes": s.bytes,
        }, indent=2))  # fmt: skip
        return
    total = "?" if s.shards_total is None else str(s.shards_total)
    click.echo(f"{out}: {s.rows:,} rows, shards {s.shards_done:,}/{total}, {s.bytes / 1e6:,.1f} MB")
    _print_counts(s.by_status, s.by_error)


@main.command("export")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write. [default: standard output]")
@click.option("--unique", is_flag=True, help="One row per distinct image: group representatives and ungrouped images (after `pipeline dedup`).")
@_handle_errors
def export_command(out: Path, fmt: str, output: Path | None, unique: bool) -> None:
    """One row per manifest row of the run in OUT, with every column the catalog holds."""
    count = export(out, output, format=fmt, unique=unique)
    if output is not None:
        click.echo(f"{count:,} rows written to {output}", err=True)


_D = DedupOptions()


@main.command("dedup")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--max-distance", type=int, default=_D.max_distance, show_default=True, help="pHash bits (of 64) within which two images are compared at all.")
@click.option("--keep", type=click.Choice(KEEP), default=_D.keep, show_default=True, help="Group representative: most pixels, smallest file, or first row (ties: first row).")
@click.option("--verify/--no-verify", default=_D.verify, show_default=True, help="Check each near pair on the stored thumbnails; --no-verify trusts pHash + dHash alone.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Also write a static HTML page of the groups to FILE.")
@_handle_errors
def dedup_command(out: Path, max_distance: int, keep: str, verify: bool, report: Path | None) -> None:
    """Group exact and near-duplicate images of the run in OUT.

    Writes the groups to the catalog, OUT/duplicates.csv and OUT/duplicates.json
    (imagededup's find_duplicates shape). Rerun after more rows were added: hashes are
    read from the catalog and earlier thumbnail checks are reused.
    """
    r = dedup(out, DedupOptions(max_distance=max_distance, keep=keep, verify=verify))
    click.echo(
        f"{r.images:,} images: {r.groups:,} groups, {r.duplicates:,} duplicates ({r.exact:,} exact) "
        f"in {r.elapsed_s:,.1f} s; {r.candidates:,} candidate pairs, {r.checked:,} checked, {r.cached:,} reused"
    )
    click.echo(f"Written: {out / DUPLICATES_CSV}, {out / DUPLICATES_JSON}")
    if report is not None:
        pages = write_report(out, report)
        click.echo(f"Report: {report} ({pages:,} groups)")


# --- output helpers --------------------------------------------------------------------------


class _ProgressReporter:
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
        click.echo(f"\r{line}\x1b[K" if self.tty else line, err=True, nl=not self.tty)

    def finish(self) -> None:
        if self.tty and self.last:
            click.echo("", err=True)


def _print_summary(s: RunSummary) -> None:
    p = s.this_run
    click.echo(
        f"Done: {p.rows:,} rows in {p.elapsed:,.1f} s ({p.rate():,.0f} rows/s)"
        + (f", {p.shards_skipped:,} shards already done" if p.shards_skipped else "")
        + f". Catalog: {s.catalog} ({s.rows:,} rows, shards {s.shards_done:,}/{s.shards_total or '?'})"
    )
    _print_counts(s.by_status, s.by_error)


def _print_counts(by_status: dict[str, int], by_error: dict[str, int]) -> None:
    for name, count in sorted(by_status.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {name:<12} {count:>10,}")
    if by_error:
        click.echo("  by error class:")
        for name, count in by_error.items():
            click.echo(f"    {name:<14} {count:>8,}")


if __name__ == "__main__":
    main()
