"""The commands' options, declared once each and shown in sections (cloup option groups)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import cloup

from pipeline.boxes import parse_size
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
from pipeline.errors import UsageError
from pipeline.schedule.executors import EXECUTORS

F = TypeVar("F", bound=Callable[..., Any])
_F, _P, _D = FetchOptions(), ProcessOptions(), DedupOptions()


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


def _apply(decorators: tuple[Callable[[F], F], ...], command: F) -> F:
    for decorator in reversed(decorators):  # the first listed shows first
        command = decorator(command)
    return command


# --- shared by run and group-by-host ----------------------------------------------------------

MANIFEST_COLUMNS = (
    click.option("--url-column", default="url", show_default=True, help="Manifest column holding the URL."),
    click.option("--key-column", default="key", show_default=True, help="Manifest column holding a row key (optional)."),
)


def manifest_columns(command: F) -> F:
    """``--url-column`` and ``--key-column``, for a command that reads a manifest."""
    return _apply(MANIFEST_COLUMNS, command)


# --- static partitions: one name per idea, the old names hidden for a release ------------------

_PARTITIONS = (
    click.option("--partitions", type=int, default=None, metavar="N", help="Static partitions: the run is split in N parts (one per machine of a Slurm array, say; then `pipeline merge`)... [default: 1]"),
    click.option("--partition", type=int, default=None, metavar="I", help="...and this invocation runs part I (0-based): the shards with id % N == I. [default: 0]"),
    # The names of releases up to 0.1; --num-workers read as a worker count beside --procs.
    click.option("--num-workers", "old_partitions", type=int, default=None, hidden=True, help="Old name of --partitions."),
    click.option("--worker-index", "old_partition", type=int, default=None, hidden=True, help="Old name of --partition."),
)  # fmt: skip


def _spelling(new: tuple[str, int | None], old: tuple[str, int | None], default: int) -> tuple[str, int]:
    """The flag that was given (for messages) and its value."""
    if new[1] is not None and old[1] is not None:
        raise click.UsageError(f"{new[0]} and {old[0]} are one option (the second its old name): give one")
    return old if old[1] is not None else (new[0], default if new[1] is None else new[1])  # type: ignore[return-value]


def _fold_partitions(command: F) -> F:
    """Hand the command ``num_workers`` and ``worker_index``, whichever spelling was used."""

    @functools.wraps(command)
    def wrapper(*args: Any, partitions: int | None, partition: int | None, old_partitions: int | None,
                old_partition: int | None, **kwargs: Any) -> Any:  # fmt: skip
        n_flag, n = _spelling(("--partitions", partitions), ("--num-workers", old_partitions), 1)
        i_flag, i = _spelling(("--partition", partition), ("--worker-index", old_partition), 0)
        # Checked here, not by RunConfig, so the message names the flags the user typed.
        if n < 1:
            raise click.UsageError(f"{n_flag} must be at least 1")
        if not 0 <= i < n:
            raise click.UsageError(f"{i_flag} must be in 0 .. {n_flag} - 1")
        return command(*args, num_workers=n, worker_index=i, **kwargs)

    return wrapper  # type: ignore[return-value]


# --- run ---------------------------------------------------------------------------------------

_RUN_SECTIONS = (
    cloup.option_group(
        "Input",
        *MANIFEST_COLUMNS,
        click.option("--caption-column", default=None, help="Manifest column written as each sample's .txt (webdataset) or caption column (parquet)."),
        click.option("--local-root", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder local paths and file:// rows must lie under. [default: the manifest's folder]"),
    ),
    cloup.option_group(
        "Output",
        click.option("-o", "--out", help="Output folder, or an fsspec URL (s3://bucket/run1). [default: ./<manifest name>.pipeline]"),
        click.option("--catalog", type=click.Path(dir_okay=False, path_type=Path), help="SQLite catalog file (local). [default: OUT/catalog.sqlite; required when --out is a URL]"),
        click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="Thumbnail names: content (thumbs/256-q85/ab/<sha256>.jpg), mirror (after the source: thumbs/256-q85/2019/beach.jpg; a URL: host/path) or key (after the key column). [default: mirror for a folder, content for a manifest file]"),
        click.option("--output-format", type=click.Choice(OUTPUT_FORMATS), default="files", show_default=True, help="files: one file per image; webdataset: tar shards 00000.tar… of <key>.jpg/.json/.txt; parquet: 00000.parquet… with the image bytes. Shards appear whole (renamed, or one upload each on s3://)."),
        click.option("--samples-per-shard", type=int, default=10_000, show_default=True, help="Samples per webdataset/parquet shard."),
        click.option("--keep-originals/--no-keep-originals", default=True, show_default=True, help="Store the downloaded files too."),
        click.option("-q", "--quiet", is_flag=True, help="No progress, only errors and the exit code."),
    ),
    cloup.option_group(
        "Images",
        click.option("--sizes", default="256", show_default=True, callback=_sizes, help="Thumbnail sizes, comma-separated: a longest side (256) or a box WxH (512x384)."),
        click.option("--fit", type=click.Choice(FITS), default=_P.fit, show_default=True, help="How an image meets its box: contain (fits inside, ratio kept), cover (fills it, centre cropped), pad (fits inside, the rest filled with --pad-color). A longest side N is the box NxN."),
        click.option("--pad-color", default=_P.pad_color, show_default=True, help="Border colour for --fit pad: #rrggbb, #rrggbbaa, a name (white, gray...), or transparent (PNG/WebP)."),
        click.option("--upscale", is_flag=True, help="Enlarge images smaller than the box. [default: never; see README]"),
        click.option("--thumbnails/--no-thumbnails", default=True, show_default=True, help="--no-thumbnails: only download, SHA-256 and keep originals; no decode, no dHash/pHash."),
        click.option("--thumb-format", type=click.Choice(THUMB_FORMATS), default=_P.thumb_format, show_default=True, help="Thumbnail encoding."),
        click.option("--thumb-quality", type=int, default=_P.thumb_quality, show_default=True, help="JPEG/WebP/AVIF quality of thumbnails."),
        click.option("--formats", default=",".join(DEFAULT_FORMATS), show_default=True, callback=_formats, help="Image formats decoded, comma-separated; others fail as not_image (HEIF needs pip install 'pipeline[heif]')."),
        click.option("--max-pixels", type=int, default=_P.max_pixels, show_default=True, help="Larger images fail as too_many_pixels."),
    ),
    cloup.option_group(
        "Network",
        click.option("--concurrency", type=int, default=_F.concurrency, show_default=True, help="Requests in flight per process."),
        click.option("--timeout", type=float, default=_F.timeout, show_default=True, help="Deadline of one request attempt, seconds."),
        click.option("--connect-timeout", type=float, default=_F.connect_timeout, show_default=True, help="Seconds to connect."),
        click.option("--read-timeout", type=float, default=_F.read_timeout, show_default=True, help="Longest silence while reading, seconds."),
        click.option("--retries", type=int, default=_F.retries, show_default=True, help="Extra attempts for transient failures."),
        click.option("--timeout-retries", type=int, default=_F.timeout_retries, show_default=True, help="...of which at most this many after a timeout (a silent server rarely answers later)."),
        click.option("--max-bytes", type=int, default=_F.max_bytes, show_default=True, help="Largest body accepted."),
        click.option("--body-budget", type=int, default=_F.body_budget, show_default=True, help="Bytes of bodies in memory per process, from download to processed (one larger body still comes in, alone)."),
        click.option("--max-redirects", type=int, default=_F.max_redirects, show_default=True, help="Redirect hops allowed."),
    ),
    cloup.option_group(
        "Politeness and safety",
        click.option("--per-host", type=int, default=_F.per_host, show_default=True, help="Requests in flight per host, all processes of this machine together."),
        click.option("--per-host-rate", type=float, default=None, help="Requests per second per host, all processes of this machine together (starts at least 1/RATE s apart). [default: no cap]"),
        click.option("--max-retry-after", type=float, default=_F.max_retry_after, show_default=True, help="Cap on a server's Retry-After, seconds."),
        click.option("--user-agent", default=DEFAULT_USER_AGENT, show_default=True, help="User-Agent header."),
        click.option("--ignore-opt-out", is_flag=True, help="Fetch even when X-Robots-Tag says noai/noimageai."),
        click.option("--allow-private", is_flag=True, help="Also connect to loopback, private, link-local and other non-public addresses."),
        click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST", help="Host (name or IP) exempt from the private-address guard; repeatable."),
        click.option("--insecure-host", "insecure_hosts", multiple=True, metavar="HOST", help="Host whose TLS certificate is not verified; repeatable."),
    ),
    cloup.option_group(
        "Processes",
        click.option("-p", "--procs", type=int, default=None, help="Worker processes on this machine, or Ray actors under --executor ray. [default: one per core; Ray: one per CPU of the cluster]"),
        click.option("--cpu-threads", type=int, default=1, show_default=True, help="Image threads per process."),
        click.option("--shard-size", type=int, default=500, show_default=True, help="Rows per shard (the unit of resume and of the catalog's done marks; workers receive rows, not shards)."),
    ),
    cloup.option_group(
        "Cluster",
        click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True, help="Where rows run: local processes, or Ray actors, one per CPU (pip install 'pipeline[ray]')."),
        click.option("--ray-address", help="Ray cluster to join, e.g. auto or ray://head:10001. [default: start a local Ray]"),
        *_PARTITIONS,
    ),
    cloup.option_group(
        "Resume and failures",
        click.option("--retry-failed", is_flag=True, help="Fetch again only the rows that failed."),
        click.option("--force", is_flag=True, help="Discard an OUT catalog of another manifest or options and start over."),
        click.option("--max-failure-rate", type=float, default=1.0, show_default=True, help="Exit 3 when more rows than this fraction failed."),
    ),
)  # fmt: skip


def run_options(command: F) -> F:
    """Every option of ``pipeline run``, in the sections of its help."""
    return _apply(_RUN_SECTIONS, _fold_partitions(command))


# Every command that reads a run names it the same ways: OUT, OUT --catalog FILE, or (where
# only the catalog is read) the catalog FILE alone; pipeline/locate.py finds it.
catalog_option = click.option("--catalog", type=click.Path(dir_okay=False, path_type=Path), help="The run's catalog file, when its run was given --catalog. [default: OUT/catalog.sqlite; required when OUT is a URL]")


# --- dedup -------------------------------------------------------------------------------------

_DEDUP_SECTIONS = (
    cloup.option_group(
        "Input and output",
        catalog_option,
        click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Folder for duplicates.csv and duplicates.json. [default: OUT; for a URL OUT, beside the catalog as <catalog stem>.duplicates.csv/.json]"),
        click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Also write a static HTML page of the groups to FILE (for a URL OUT, with local copies of the thumbnails shown in FILE's folder, <name>_files/)."),
    ),
    cloup.option_group(
        "Grouping",
        click.option("--max-distance", type=int, default=_D.max_distance, show_default=True, help="pHash bits (of 64) within which two images are compared at all."),
        click.option("--keep", type=click.Choice(KEEP), default=_D.keep, show_default=True, help="Group representative: most pixels, smallest file, or first row (ties: first row)."),
        click.option("--verify/--no-verify", default=_D.verify, show_default=True, help="Check each near pair on the stored thumbnails; --no-verify trusts pHash + dHash alone."),
    ),
    cloup.option_group(
        "Processes",
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes for the thumbnail work (variant hashes, checks); the groups are the same for any number. [default: every CPU]"),
    ),
)  # fmt: skip


def dedup_options(command: F) -> F:
    """Every option of ``pipeline dedup``, in the sections of its help."""
    return _apply(_DEDUP_SECTIONS, command)
