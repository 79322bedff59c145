"""The ``pipeline`` command: a thin click client of the ``pipeline`` library.

This is the only module that imports click. Library errors become a one-line
``Error: …`` and an exit code here, in one place:

  0    done
  1    internal error (a bug: please report it with the traceback from --debug), OUT
       cannot be written, or the manifest is cut short (rows before the cut are committed)
  2    usage error, unreadable manifest, a refused resume, OUT in use by another run, or
       workers that die while starting (run() from a script without the __main__ guard)
  3    done, but the failure rate is above --max-failure-rate (run), or partitions are
       missing or unfinished (merge)
  130  interrupted (Ctrl-C); rerun the same command to resume
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.boxes import parse_size
from pipeline.catalog import Catalog, locate
from pipeline.config import (
    DEFAULT_FORMATS,
    DEFAULT_USER_AGENT,
    FITS,
    KEEP,
    LAYOUTS,
    OUTPUT_FORMATS,
    THUMB_FORMATS,
    DedupOptions,
    FetchOptions,
    ProcessOptions,
)
from pipeline.errors import PipelineError, UsageError
from pipeline.export import FORMATS, export
from pipeline.manifest.spec import open_manifest
from pipeline.merge import merge
from pipeline.outlock import catalog_lock_path, locked, out_lock_path
from pipeline.runner import Progress, RunSummary, run
from pipeline.schedule.executors import EXECUTORS, make_executor
from pipeline.schedule.hostsort import group_by_host

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


class _EchoWarnings(logging.Handler):
    """Library warnings (logger ``pipeline``) as ``Warning: …`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Warning: {record.getMessage()}", err=True)


_WARNINGS = _EchoWarnings(logging.WARNING)


def _show_library_warnings() -> None:
    logger = logging.getLogger("pipeline")
    if _WARNINGS not in logger.handlers:
        logger.addHandler(_WARNINGS)
        logger.propagate = False


@contextlib.contextmanager
def _second_interrupt_exits() -> Iterator[None]:
    """First Ctrl-C: unwind cleanly (workers stopped, temp files removed, catalog closed,
    exit 130). A second one while that happens: kill the workers and exit at once; the
    catalog stays consistent (SQLite rolls back an open transaction) and the next run
    clears any temp file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def immediately(signum: int, frame: object) -> None:
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(EXIT_INTERRUPTED)

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, immediately)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    except KeyboardInterrupt:
        raise  # `immediately` stays installed until the process exits
    except BaseException:
        signal.signal(signal.SIGINT, previous)
        raise
    signal.signal(signal.SIGINT, previous)


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int | str, ...]:
    try:
        return tuple(parse_size(v) for v in value.split(",") if v.strip())
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    """``--formats jpeg,png,heic``: a subset of the default allowlist (it only narrows)."""
    names = [_FORMAT_ALIASES.get(v, v) for v in (v.strip().upper() for v in value.split(",")) if v]
    for name in names:
        if name not in DEFAULT_FORMATS:
            raise click.BadParameter(f"unknown format {name!r}; choose from {', '.join(DEFAULT_FORMATS)}")
    if not names:
        raise click.BadParameter("give at least one format, e.g. jpeg,png,webp")
    # In the default's order, whatever the order given: the list is part of the run's fingerprint.
    return tuple(f for f in DEFAULT_FORMATS if f in names)


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
@click.option("-o", "--out", help="Output folder, or an fsspec URL (s3://bucket/run1). [default: ./<manifest name>.pipeline]")
@click.option("-p", "--procs", type=int, default=None, help="Worker processes. [default: one per core]")
@click.option("--shard-size", type=int, default=500, show_default=True, help="Rows per shard (the unit of resume and of the catalog's done marks; workers receive rows, not shards).")
@click.option("--concurrency", type=int, default=_F.concurrency, show_default=True, help="Requests in flight per process.")
@click.option("--per-host", type=int, default=_F.per_host, show_default=True, help="Requests in flight per host, all processes of this machine together.")
@click.option("--per-host-rate", type=float, default=None, help="Requests per second per host, all processes of this machine together (starts at least 1/RATE s apart). [default: no cap]")
@click.option("--cpu-threads", type=int, default=1, show_default=True, help="Image threads per process.")
@click.option("--timeout", type=float, default=_F.timeout, show_default=True, help="Deadline of one request attempt, seconds.")
@click.option("--connect-timeout", type=float, default=_F.connect_timeout, show_default=True, help="Seconds to connect.")
@click.option("--read-timeout", type=float, default=_F.read_timeout, show_default=True, help="Longest silence while reading, seconds.")
@click.option("--retries", type=int, default=_F.retries, show_default=True, help="Extra attempts for transient failures.")
@click.option("--timeout-retries", type=int, default=_F.timeout_retries, show_default=True, help="...of which at most this many after a timeout (a silent server rarely answers later).")
@click.option("--max-retry-after", type=float, default=_F.max_retry_after, show_default=True, help="Cap on a server's Retry-After, seconds.")
@click.option("--max-bytes", type=int, default=_F.max_bytes, show_default=True, help="Largest body accepted.")
@click.option("--body-budget", type=int, default=_F.body_budget, show_default=True, help="Bytes of bodies in memory per process, from download to processed (one larger body still comes in, alone).")
@click.option("--max-redirects", type=int, default=_F.max_redirects, show_default=True, help="Redirect hops allowed.")
@click.option("--user-agent", default=DEFAULT_USER_AGENT, show_default=True, help="User-Agent header.")
@click.option("--ignore-opt-out", is_flag=True, help="Fetch even when X-Robots-Tag says noai/noimageai.")
@click.option("--allow-private", is_flag=True, help="Also connect to loopback, private, link-local and other non-public addresses.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST", help="Host (name or IP) exempt from the private-address guard; repeatable.")
@click.option("--insecure-host", "insecure_hosts", multiple=True, metavar="HOST", help="Host whose TLS certificate is not verified; repeatable.")
@click.option("--sizes", default="256", show_default=True, callback=_sizes, help="Thumbnail sizes, comma-separated: a longest side (256) or a box WxH (512x384).")
@click.option("--fit", type=click.Choice(FITS), default=_P.fit, show_default=True, help="How an image meets its box: contain (fits inside, ratio kept), cover (fills it, centre cropped), pad (fits inside, the rest filled with --pad-color). A longest side N is the box NxN.")
@click.option("--pad-color", default=_P.pad_color, show_default=True, help="Border colour for --fit pad: #rrggbb, #rrggbbaa, a name (white, gray...), or transparent (PNG/WebP).")
@click.option("--upscale", is_flag=True, help="Enlarge images smaller than the box. [default: never; see README]")
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True, help="--no-thumbnails: only download, SHA-256 and keep originals; no decode, no dHash/pHash.")
@click.option("--thumb-format", type=click.Choice(THUMB_FORMATS), default=_P.thumb_format, show_default=True, help="Thumbnail encoding.")
@click.option("--thumb-quality", type=int, default=_P.thumb_quality, show_default=True, help="JPEG/WebP/AVIF quality of thumbnails.")
@click.option("--formats", default=",".join(DEFAULT_FORMATS), show_default=True, callback=_formats, help="Image formats decoded, comma-separated; others fail as not_image (HEIF needs pip install 'pipeline[heif]').")
@click.option("--keep-originals/--no-keep-originals", default=True, show_default=True, help="Store the downloaded files too.")
@click.option("--max-pixels", type=int, default=_P.max_pixels, show_default=True, help="Larger images fail as too_many_pixels.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="Thumbnail names: content (thumbs/256-q85/ab/<sha256>.jpg), mirror (after the source: thumbs/256-q85/2019/beach.jpg; a URL: host/path) or key (after the key column). [default: mirror for a folder, content for a manifest file]")
@click.option("--output-format", type=click.Choice(OUTPUT_FORMATS), default="files", show_default=True, help="files: one file per image; webdataset: tar shards 00000.tar… of <key>.jpg/.json/.txt; parquet: 00000.parquet… with the image bytes. Shards appear whole (renamed, or one upload each on s3://).")
@click.option("--samples-per-shard", type=int, default=10_000, show_default=True, help="Samples per webdataset/parquet shard.")
@click.option("--caption-column", default=None, help="Manifest column written as each sample's .txt (webdataset) or caption column (parquet).")
@click.option("--url-column", default="url", show_default=True, help="Manifest column holding the URL.")
@click.option("--key-column", default="key", show_default=True, help="Manifest column holding a row key (optional).")
@click.option("--local-root", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder local paths and file:// rows must lie under. [default: the manifest's folder]")
@click.option("--retry-failed", is_flag=True, help="Fetch again only the rows that failed.")
@click.option("--force", is_flag=True, help="Discard an OUT catalog of another manifest or options and start over.")
@click.option("--max-failure-rate", type=float, default=1.0, show_default=True, help="Exit 3 when more rows than this fraction failed.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True, help="Where rows run: local processes, or Ray actors, one per CPU (pip install 'pipeline[ray]').")
@click.option("--ray-address", help="Ray cluster to join, e.g. auto or ray://head:10001. [default: start a local Ray]")
@click.option("--num-workers", type=int, default=1, show_default=True, help="Static partitioning: the run is split in this many parts...")
@click.option("--worker-index", type=int, default=0, show_default=True, help="...and this invocation runs part number (0-based): shards with id % N == index.")
@click.option("--catalog", type=click.Path(dir_okay=False, path_type=Path), help="SQLite catalog file (local). [default: OUT/catalog.sqlite; required when --out is a URL]")
@click.option("-q", "--quiet", is_flag=True, help="No progress, only errors and the exit code.")
@_handle_errors
def run_command(
    manifest: Path, out: str | None, quiet: bool, ignore_opt_out: bool, executor: str, ray_address: str | None,
    **options: Any,
) -> None:
    """Download and process every row of MANIFEST.

    MANIFEST is a .csv/.tsv (with a header; a 'url' column, optional 'key', other columns
    kept), .txt (one URL per line), .jsonl or .parquet file, optionally .gz, or a folder of
    images. Rerunning the same command resumes where the last run stopped.
    """
    if options["procs"] is None:
        del options["procs"]
    options["respect_opt_out"] = not ignore_opt_out
    engine = None if executor == "local" and ray_address is None else make_executor(
        executor, procs=options.get("procs"), ray_address=ray_address
    )
    _show_library_warnings()
    reporter = None if quiet else _ProgressReporter()
    with _second_interrupt_exits():
        summary = run(manifest, out=out, on_progress=reporter, executor=engine, **options)
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
@click.argument("out", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@_handle_errors
def status_command(out: Path, as_json: bool) -> None:
    """Counts by status and error class, and shards done, for the run in OUT.

    OUT is the run's folder, or its catalog file (for a run whose --out was a URL).
    """
    with Catalog(locate(out), readonly=True) as catalog:
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
@click.argument("out", type=click.Path(exists=True, path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write. [default: standard output]")
@click.option("--unique", is_flag=True, help="One row per distinct image: group representatives and ungrouped images (after `pipeline dedup`).")
@click.option("--samples-per-shard", type=int, default=10_000, show_default=True, help="For --format webdataset: samples per tar shard.")
@_handle_errors
def export_command(out: Path, fmt: str, output: Path | None, unique: bool, samples_per_shard: int) -> None:
    """One row per manifest row of the run in OUT, with every column the catalog holds.

    OUT is the run's folder, or its catalog file (for a run whose --out was a URL).
    --format webdataset writes the ok rows' images as tar shards into the folder --output.
    """
    count = export(out, output, format=fmt, unique=unique, samples_per_shard=samples_per_shard)
    if output is not None:
        click.echo(f"{count:,} {'samples' if fmt == 'webdataset' else 'rows'} written to {output}", err=True)


@main.command("merge")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Merged catalog file. [default: OUT/catalog.sqlite]")
@_handle_errors
def merge_command(out: Path, output: Path | None) -> None:
    """Combine the partition catalogs in OUT (catalog-I-of-N.sqlite) into one catalog.

    Safe to repeat, e.g. once more when a late partition has finished. Exits 3 when
    partitions are missing or unfinished (the others are merged all the same).
    """
    # It writes the catalog a whole run of OUT would use: never under that run.
    with _out_locked(out if output is None else None, output):
        r = merge(out, output=output)
    click.echo(
        f"Merged {len(r.merged)} of {r.num_workers} partitions into {r.catalog}: "
        f"{r.rows:,} rows, shards {r.shards_done:,}/{r.shards_total or '?'}"
    )
    problems = [f"missing: {_indices(r.missing)}"] if r.missing else []
    problems += [f"unfinished: {_indices(r.incomplete)}"] if r.incomplete else []
    if problems:
        click.echo(f"Error: partitions {'; '.join(problems)} (of {r.num_workers}); rerun them, then merge again", err=True)
        sys.exit(EXIT_FAILURES)


def _indices(indices: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in indices)


@main.command("group-by-host")
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL manifest to write.")
@click.option("--chunk-rows", type=int, default=500_000, show_default=True, help="Rows sorted in memory at a time.")
@click.option("--url-column", default="url", show_default=True, help="Manifest column holding the URL.")
@click.option("--key-column", default="key", show_default=True, help="Manifest column holding a row key (optional).")
@_handle_errors
def group_by_host_command(manifest: Path, output: Path, chunk_rows: int, url_column: str, key_column: str) -> None:
    """Rewrite MANIFEST with each host's rows together, before a run on many machines.

    Then a host's URLs fill few shards, so few machines (or Ray processes) connect to it
    at once: --per-host holds per machine, and per process under Ray.
    Streams (an external sort): memory stays at --chunk-rows rows.
    """
    spec = open_manifest(manifest, url_column=url_column, key_column=key_column)
    rows, hosts = group_by_host(spec, output, chunk_rows=chunk_rows)
    click.echo(f"{rows:,} rows of {hosts:,} hosts written to {output}", err=True)


_D = DedupOptions()


@main.command("dedup")
@click.argument("out")
@click.option("--catalog", type=click.Path(dir_okay=False, path_type=Path), help="The run's catalog file, when its run was given --catalog. [default: OUT/catalog.sqlite; required when OUT is a URL]")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Folder for duplicates.csv and duplicates.json. [default: OUT; for a URL OUT, beside the catalog as <catalog stem>.duplicates.csv/.json]")
@click.option("--max-distance", type=int, default=_D.max_distance, show_default=True, help="pHash bits (of 64) within which two images are compared at all.")
@click.option("--keep", type=click.Choice(KEEP), default=_D.keep, show_default=True, help="Group representative: most pixels, smallest file, or first row (ties: first row).")
@click.option("--verify/--no-verify", default=_D.verify, show_default=True, help="Check each near pair on the stored thumbnails; --no-verify trusts pHash + dHash alone.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Also write a static HTML page of the groups to FILE (for a URL OUT, with local copies of the thumbnails shown in FILE's folder, <name>_files/).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes for the thumbnail work (variant hashes, checks); the groups are the same for any number. [default: every CPU]")
@_handle_errors
def dedup_command(
    out: str, catalog: Path | None, output: Path | None, max_distance: int, keep: str, verify: bool, report: Path | None,
    workers: int | None,
) -> None:
    """Group exact and near-duplicate images of the run in OUT.

    OUT is the run's --out: a folder, or an fsspec URL (s3://bucket/run1, with --catalog).
    Writes the groups to the catalog, duplicates.csv and duplicates.json (imagededup's
    find_duplicates shape). Rerun after more rows were added: hashes are read from the
    catalog and earlier thumbnail checks are reused. A --no-thumbnails run has exact
    groups only (a note says so).
    """
    # Imported here: numpy and Pillow cost the parent of every `pipeline run` ~30 MB and 80 ms.
    from pipeline.dedup import dedup, report_thumbnails, run_files
    from pipeline.dedup.report import write_report

    options = DedupOptions(max_distance=max_distance, keep=keep, verify=verify)
    files = run_files(out, catalog, output)  # no run there: a usage error, no lock file left
    Catalog(files.catalog, readonly=True).close()
    with _dedup_locked(files.out, files.catalog):  # it rewrites the groups a run's --force would delete
        r = dedup(files.out, options, catalog=files.catalog, output=output, workers=workers)
    if r.notice:
        click.echo(f"Note: {r.notice}", err=True)
    click.echo(
        f"{r.images:,} images: {r.groups:,} groups, {r.duplicates:,} duplicates ({r.exact:,} exact) "
        f"in {r.elapsed_s:,.1f} s; {r.candidates:,} candidate pairs, {r.checked:,} checked, {r.cached:,} reused"
    )
    click.echo(f"Written: {r.written[0]}, {r.written[1]}")
    if report is not None:
        thumbs = report_thumbnails(files, report.with_name(report.stem + "_files"))
        pages = write_report(files.out, report, catalog=files.catalog, thumbs=thumbs)
        click.echo(f"Report: {report} ({pages:,} groups)")


def _dedup_locked(out: Path | str, catalog: Path) -> contextlib.ExitStack:
    """The locks the run of OUT holds: OUT's (a local OUT) and its catalog's when that is
    elsewhere (always for a URL OUT)."""
    stack = contextlib.ExitStack()
    try:
        if isinstance(out, Path):
            stack.enter_context(locked(out_lock_path(out), out))
        if not isinstance(out, Path) or catalog.resolve().parent != out.resolve():
            stack.enter_context(locked(catalog_lock_path(catalog), catalog, instead="--catalog"))
    except BaseException:
        stack.close()
        raise
    return stack


def _out_locked(out: Path | None, catalog: Path | None = None) -> contextlib.ExitStack:
    """The lock a run of OUT holds (or the lock of a catalog file elsewhere)."""
    stack = contextlib.ExitStack()
    if out is not None:
        stack.enter_context(locked(out_lock_path(out), out))
    if catalog is not None:
        stack.enter_context(locked(catalog_lock_path(catalog), catalog, instead="--output"))
    return stack


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
