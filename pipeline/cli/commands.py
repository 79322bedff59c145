"""The commands of ``pipeline`` and their help; each body calls the library and prints."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click
import cloup

from pipeline import __version__
from pipeline.catalog import Catalog
from pipeline.catalog_export import FORMATS, export
from pipeline.cli.exits import EXIT_FAILURES, handle_errors, quiet_when_reader_leaves, second_interrupt_exits
from pipeline.cli.options import catalog_option, dedup_options, manifest_columns, run_options
from pipeline.cli.output import print_counts, print_summary, show_library_warnings
from pipeline.config import DedupOptions
from pipeline.display import ProgressDisplay
from pipeline.locate import find_run
from pipeline.manifest.spec import open_manifest
from pipeline.merge import merge
from pipeline.outlock import catalog_lock_path, locked, out_lock_path
from pipeline.runner import run
from pipeline.schedule.executors import make_executor
from pipeline.schedule.hostsort import group_by_host

# Bold headings on a terminal; click drops the escape codes when the help goes to a pipe or file.
_THEME = cloup.HelpTheme(heading=cloup.Style(bold=True))


@cloup.group(context_settings=cloup.Context.settings(
    help_option_names=["-h", "--help"], max_content_width=100,
    formatter_settings=cloup.HelpFormatter.settings(theme=_THEME),
))
@click.version_option(__version__, prog_name="pipeline")
def main() -> None:
    """Download image URLs on every core into thumbnails, hashes and a resumable catalog.

    \b
      pipeline run manifest.csv --procs 4      # writes ./manifest.pipeline/
      pipeline status manifest.pipeline        # what happened so far
      pipeline export manifest.pipeline --format parquet -o catalog.parquet
    """
    quiet_when_reader_leaves()


@main.command("run")
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@run_options
@handle_errors
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
    show_library_warnings()
    display = None if quiet else ProgressDisplay()
    with second_interrupt_exits(), display or contextlib.nullcontext():
        summary = run(manifest, out=out, on_progress=display, executor=engine, **options)
    if not quiet:
        print_summary(summary)
    if summary.failure_rate > options["max_failure_rate"]:
        click.echo(
            f"Error: {summary.failure_rate:.1%} of rows failed, above --max-failure-rate "
            f"{options['max_failure_rate']:.1%}",
            err=True,
        )
        sys.exit(EXIT_FAILURES)


@main.command("status")
@click.argument("out")
@catalog_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@handle_errors
def status_command(out: str, catalog: Path | None, as_json: bool) -> None:
    """Counts by status and error class, and shards done, for the run in OUT.

    OUT is the run's folder or fsspec URL (with --catalog), or its catalog file.
    """
    with Catalog(find_run(out, catalog).catalog, readonly=True) as db:
        s = db.summary()
    if as_json:
        click.echo(json.dumps({
            "rows": s.rows, "by_status": s.by_status, "by_error": s.by_error,
            "shards_done": s.shards_done, "shards_total": s.shards_total, "bytes": s.bytes,
        }, indent=2))  # fmt: skip
        return
    total = "?" if s.shards_total is None else str(s.shards_total)
    click.echo(f"{out}: {s.rows:,} rows, shards {s.shards_done:,}/{total}, {s.bytes / 1e6:,.1f} MB")
    print_counts(s.by_status, s.by_error)


@main.command("export")
@click.argument("out")
@catalog_option
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write. [default: standard output]")
@click.option("--unique", is_flag=True, help="One row per distinct image: group representatives and ungrouped images (after `pipeline dedup`).")
@click.option("--samples-per-shard", type=int, default=10_000, show_default=True, help="For --format webdataset: samples per tar shard.")
@handle_errors
def export_command(
    out: str, catalog: Path | None, fmt: str, output: Path | None, unique: bool, samples_per_shard: int
) -> None:
    """One row per manifest row of the run in OUT, with every column the catalog holds.

    OUT is the run's folder or fsspec URL (with --catalog), or its catalog file.
    --format webdataset writes the ok rows' images as tar shards into the folder --output.
    """
    count = export(out, output, format=fmt, unique=unique, samples_per_shard=samples_per_shard, catalog=catalog)
    if output is not None:
        click.echo(f"{count:,} {'samples' if fmt == 'webdataset' else 'rows'} written to {output}", err=True)


@main.command("merge")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Merged catalog file. [default: OUT/catalog.sqlite]")
@handle_errors
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
@manifest_columns
@handle_errors
def group_by_host_command(manifest: Path, output: Path, chunk_rows: int, url_column: str, key_column: str) -> None:
    """Rewrite MANIFEST with each host's rows together, before a run on many machines.

    Then a host's URLs fill few shards, so few machines (or Ray processes) connect to it
    at once: --per-host holds per machine, and per process under Ray.
    Streams (an external sort): memory stays at --chunk-rows rows.
    """
    spec = open_manifest(manifest, url_column=url_column, key_column=key_column)
    rows, hosts = group_by_host(spec, output, chunk_rows=chunk_rows)
    click.echo(f"{rows:,} rows of {hosts:,} hosts written to {output}", err=True)


@main.command("dedup")
@click.argument("out")
@dedup_options
@handle_errors
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
