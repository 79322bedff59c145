"""Options of a run, validated once, frozen, picklable into every worker.

Options are split by who needs them: ``FetchOptions`` (network), ``ProcessOptions``
(image work) and ``RunConfig`` (everything, plus where things live). Vary them with
``dataclasses.replace``. ``RunConfig.fingerprint_options()`` names the options that change
results; only those take part in the resume check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import __version__
from pipeline.boxes import color_rgba, parse_color, parse_size, size_order
from pipeline.errors import UsageError

DEFAULT_USER_AGENT = (
    f"pipeline/{__version__} (image downloader; honours X-Robots-Tag noai/noimageai)"
)

# Formats Pillow may open. Anything else is `not_image`, even if Pillow has a plugin for it:
# every extra decoder is extra attack surface (e.g. EPS shells out to Ghostscript).
# AVIF: Pillow's own plugin (libavif). HEIF (HEIC): only when the `heif` extra (pillow-heif) is
# installed; without it such a row fails as not_image, naming the extra (pipeline/image/formats.py).
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO", "AVIF", "HEIF")
THUMB_FORMATS = ("jpeg", "webp", "png", "avif")
_LOSSY_THUMB_FORMATS = ("jpeg", "webp", "avif")
NO_ALPHA_FORMATS = ("jpeg",)  # thumbnail formats without an alpha channel
# How a thumbnail meets its box: ``contain`` fits inside keeping the ratio (the only way
# before issue 12), ``cover`` fills it and crops the centre, ``pad`` fits inside and fills
# the rest with ``pad_color`` (letterbox).
FITS = ("contain", "cover", "pad")
LAYOUTS = ("content", "mirror", "key")  # thumbnail names: pipeline/layout.py
# What a run delivers (issue 14): one file per image (``files``), or its ok samples packed into
# WebDataset tar shards or Parquet files with the image bytes (pipeline/dataset/).
OUTPUT_FORMATS = ("files", "webdataset", "parquet")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


@dataclass(frozen=True, slots=True)
class FetchOptions:
    # Requests in flight per worker process, at most: ~400 in total hide 100 ms of latency at
    # 2,500+ downloads/s; bodies waiting for the CPU are bounded apart (admission.py).
    concurrency: int = 256
    per_host: int = 8  # requests in flight per host on this machine (per process under Ray)
    # Requests per second per host on this machine: starts at least 1/rate s apart. None: no cap.
    per_host_rate: float | None = None
    timeout: float = 30.0  # total deadline of one attempt, seconds
    connect_timeout: float = 10.0
    # Longest silence between two reads (headers included). 10 s, as img2dataset: a server
    # silent that long rarely answers at all, and each silent URL costs this per attempt.
    read_timeout: float = 10.0
    retries: int = 2  # extra attempts after the first, for transient failures only
    # ... of which at most this many after a timeout. A URL that never answers cost 3 x 15 s
    # + backoff = ~46 s; measured on bench/web.py (0.5% silent URLs), retrying a timeout once
    # rescued no row and left 17 s of tail after the last good one (55.9 good images/s);
    # not retrying: a 5 s tail, 66.6/s, every fault in its class. `--retry-failed` tries
    # timeouts again, later, when the user wants it.
    timeout_retries: int = 0
    backoff_base: float = 0.5  # first backoff ceiling, seconds; doubles each attempt
    backoff_max: float = 20.0
    max_retry_after: float = 60.0  # a server's Retry-After is clamped to this
    max_bytes: int = 50 * 1024 * 1024
    # Bytes of bodies in one process (first byte read to processed), at most; one body alone
    # may exceed it. Without: `concurrency` partial bodies of `max_bytes`, 12.8 GB (issue 11).
    body_budget: int = 512 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    respect_opt_out: bool = True
    # SSRF guard (see pipeline/net/guard.py): by default only globally routable addresses.
    allow_private: bool = False  # also connect to loopback, private, link-local, ...
    allow_hosts: tuple[str, ...] = ()  # names or IPs exempt from the guard
    insecure_hosts: tuple[str, ...] = ()  # names or IPs whose TLS certificate is not verified

    def __post_init__(self) -> None:
        for name in ("allow_hosts", "insecure_hosts"):
            hosts = tuple(h.strip().lower().strip("[]") for h in getattr(self, name))
            _require(all(hosts), f"--{name[:-1].replace('_', '-')} must not be empty")
            object.__setattr__(self, name, hosts)
        _require(self.concurrency >= 1, "--concurrency must be at least 1")
        _require(self.per_host >= 1, "--per-host must be at least 1")
        _require(self.per_host_rate is None or self.per_host_rate > 0, "--per-host-rate must be positive")
        _require(self.timeout > 0, "--timeout must be positive")
        _require(self.connect_timeout > 0, "--connect-timeout must be positive")
        _require(self.read_timeout > 0, "--read-timeout must be positive")
        _require(self.retries >= 0, "--retries must be 0 or more")
        _require(self.timeout_retries >= 0, "--timeout-retries must be 0 or more")
        _require(self.backoff_base >= 0 and self.backoff_max >= 0, "backoff must be >= 0")
        _require(self.max_retry_after >= 0, "--max-retry-after must be 0 or more")
        _require(self.max_bytes >= 1, "--max-bytes must be at least 1")
        _require(self.body_budget >= 1, "--body-budget must be at least 1")
        _require(self.max_redirects >= 0, "--max-redirects must be 0 or more")
        _require(bool(self.user_agent.strip()), "--user-agent must not be empty")


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    # Each thumbnail's box, largest first: an int is a longest side (the box NxN), "WxH"
    # a box of another ratio (``parse_size``). ``fit`` says how the image meets the box.
    sizes: tuple[int | str, ...] = (256,)
    # False: download, SHA-256 and keep the original only; no decode, thumbnails or dHash/pHash.
    thumbnails: bool = True
    thumb_format: str = "jpeg"
    thumb_quality: int = 85
    keep_originals: bool = True
    max_pixels: int = 89_478_485  # Pillow's own default bomb limit (~ 9459 x 9459)
    formats: tuple[str, ...] = DEFAULT_FORMATS
    fit: str = "contain"  # one of FITS
    pad_color: str = "black"  # for fit="pad": a name or hex (``parse_color``); stored as its tag
    upscale: bool = False  # enlarge images smaller than the box (else never: see README)

    def __post_init__(self) -> None:
        sizes = tuple(parse_size(s) for s in self.sizes)
        _require(len(sizes) >= 1, "--sizes needs at least one size")
        _require(len(set(sizes)) == len(sizes), "--sizes must not repeat")
        object.__setattr__(self, "sizes", tuple(sorted(sizes, key=size_order, reverse=True)))
        fmt = self.thumb_format.lower()
        _require(fmt in THUMB_FORMATS, f"--thumb-format must be one of {', '.join(THUMB_FORMATS)}")
        object.__setattr__(self, "thumb_format", fmt)
        _require(self.fit in FITS, f"--fit must be one of {', '.join(FITS)}")
        color = parse_color(self.pad_color)
        object.__setattr__(self, "pad_color", color)
        _require(
            self.fit != "pad" or color_rgba(color)[3] == 255 or fmt not in NO_ALPHA_FORMATS,
            f"--pad-color {self.pad_color} needs a thumbnail format with alpha (not {fmt}): "
            "e.g. --thumb-format png or webp",
        )
        _require(1 <= self.thumb_quality <= 100, "--thumb-quality must be between 1 and 100")
        _require(self.max_pixels >= 1, "--max-pixels must be at least 1")
        object.__setattr__(self, "formats", tuple(f.upper() for f in self.formats))

    @property
    def thumb_ext(self) -> str:
        return {"jpeg": "jpg", "webp": "webp", "png": "png", "avif": "avif"}[self.thumb_format]

    @property
    def thumb_variant(self) -> str:
        """What else than size and format (the folder, the extension) changes a thumbnail's
        bytes, as a tag in its stored name: ``q85`` for JPEG/WebP/AVIF, ``""`` for PNG (lossless);
        before it ``cover`` or ``pad-<colour>`` (``contain``, the default, adds nothing) and
        ``up`` for ``upscale``: ``cover-up-q85``, ``pad-ffffff-q85``, ``pad-transparent``.

        Files are never rewritten (a name is its content), so an option missing here would
        make ``--force --thumb-quality 30`` keep the old files: add every new one that
        changes the encoded bytes. Today's options keep today's tags (an OUT resumes)."""
        parts = []
        if self.fit == "cover":
            parts.append("cover")
        elif self.fit == "pad":
            parts += ["pad", self.pad_color]
        if self.upscale:
            parts.append("up")
        if self.thumb_format in _LOSSY_THUMB_FORMATS:
            parts.append(f"q{self.thumb_quality}")
        return "-".join(parts)


def default_procs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def is_url(out: str | os.PathLike[str]) -> bool:
    """``s3://bucket/run``, ``memory://x``: an fsspec URL rather than a local path."""
    return isinstance(out, str) and "://" in out and not out.startswith("file://")


@dataclass(frozen=True, slots=True)
class RunConfig:
    out: Path | str  # a local folder, or an fsspec URL (s3://, gs://, memory://) kept as str
    procs: int = field(default_factory=default_procs)
    shard_size: int = 500
    # Pillow threads per worker (it releases the GIL; see docs/design.md). One per process
    # when there is one process per core: a second one only adds switching (bench/handoff.py).
    cpu_threads: int = 1
    url_column: str = "url"
    key_column: str = "key"
    local_root: Path | None = None  # None: the manifest's own folder
    retry_failed: bool = False
    force: bool = False
    max_failure_rate: float = 1.0
    catalog: Path | None = None  # None: OUT/catalog.sqlite (required when OUT is a URL)
    # Thumbnail names (layout.py): "content" (by SHA-256), "mirror" (after the source's
    # path), "key" (after the key column). None: mirror for a folder, content for a manifest
    # file (settled by the runner, which knows the manifest: layout.default_layout).
    layout: str | None = None
    output_format: str = "files"  # one of OUTPUT_FORMATS
    samples_per_shard: int = 10_000  # samples per dataset shard (webdataset, parquet)
    caption_column: str | None = None  # manifest column written as each sample's .txt
    num_workers: int = 1  # static partitioning: this run takes shards with
    worker_index: int = 0  # shard_id % num_workers == worker_index
    fetch: FetchOptions = field(default_factory=FetchOptions)
    process: ProcessOptions = field(default_factory=ProcessOptions)

    def __post_init__(self) -> None:
        # Path("s3://b/x") would collapse the "//"; a URL stays a string.
        object.__setattr__(self, "out", self.out.rstrip("/") if is_url(self.out) else Path(self.out))
        _require(self.procs >= 1, "--procs must be at least 1")
        _require(self.shard_size >= 1, "--shard-size must be at least 1")
        _require(self.cpu_threads >= 1, "--cpu-threads must be at least 1")
        _require(0.0 <= self.max_failure_rate <= 1.0, "--max-failure-rate must be between 0 and 1")
        _require(self.layout in (None, *LAYOUTS), f"--layout must be one of {', '.join(LAYOUTS)}")
        _require(self.output_format in OUTPUT_FORMATS, f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")
        _require(self.samples_per_shard >= 1, "--samples-per-shard must be at least 1")
        _require(self.caption_column is None or bool(self.caption_column.strip()), "--caption-column must not be empty")
        _require(self.num_workers >= 1, "--num-workers must be at least 1")
        _require(0 <= self.worker_index < self.num_workers, "--worker-index must be in 0 .. --num-workers - 1")
        if self.catalog is not None:
            object.__setattr__(self, "catalog", Path(self.catalog))
        if self.local_root is not None:
            object.__setattr__(self, "local_root", Path(self.local_root).resolve())

    @property
    def partition(self) -> str | None:
        """``"3-of-8"`` when this run is one static partition, else None."""
        return f"{self.worker_index}-of-{self.num_workers}" if self.num_workers > 1 else None

    def fingerprint_options(self) -> dict[str, object]:
        """Options whose change would make earlier rows disagree with later ones."""
        return {
            "shard_size": self.shard_size,
            "url_column": self.url_column,
            "key_column": self.key_column,
            "local_root": str(self.local_root) if self.local_root else None,
            "sizes": list(self.process.sizes),
            "thumbnails": self.process.thumbnails,
            "thumb_format": self.process.thumb_format,
            "thumb_quality": self.process.thumb_quality,
            "keep_originals": self.process.keep_originals,
            "max_pixels": self.process.max_pixels,
            # null for content, so catalogs from before layouts (no entry: null) resume as such
            "layout": None if self.layout in (None, "content") else self.layout,
            "formats": list(self.process.formats),
            # Null for the defaults, as older catalogs (no entry) read: they still resume.
            "fit": None if self.process.fit == "contain" else self.process.fit,
            "pad_color": self.process.pad_color if self.process.fit == "pad" else None,
            "upscale": self.process.upscale or None,
            "max_bytes": self.fetch.max_bytes,
            "respect_opt_out": self.fetch.respect_opt_out,
            # Servers answer (and opt out) per agent. The default names the version: null, so
            # an upgrade alone does not refuse a resume (older catalogs have no entry: null too).
            "user_agent": None if self.fetch.user_agent == DEFAULT_USER_AGENT else self.fetch.user_agent,
            # Null for files (older catalogs: no entry). A dataset's shard boundaries and
            # members follow these, so a resume with others would mix two datasets.
            **(
                {}
                if self.output_format == "files"
                else {
                    "output_format": self.output_format,
                    "samples_per_shard": self.samples_per_shard,
                    "caption_column": self.caption_column,
                }
            ),
        }


# --- dedup (here, not in pipeline/dedup/, so the CLI can show defaults without importing numpy) ---

KEEP = ("largest", "smallest-file", "first")
CSV_NAME = "duplicates.csv"
JSON_NAME = "duplicates.json"


@dataclass(frozen=True, slots=True)
class DedupOptions:
    max_distance: int = 8  # pHash radius of the candidate search (see README "Duplicates": why 8)
    keep: str = "largest"
    verify: bool = True
    max_sum: int = 40  # pHash + dHash distance of an accepted pair
    min_similarity: float = 0.90  # thumbnail match (intensity + edges) of an accepted pair

    def __post_init__(self) -> None:
        if not 0 <= self.max_distance <= 32:
            raise UsageError("--max-distance must be between 0 and 32 (bits of a 64-bit hash)")
        if self.keep not in KEEP:
            raise UsageError(f"--keep must be one of {', '.join(KEEP)}")
