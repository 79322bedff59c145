"""A manifest of any kind read: its rows in order, its extra columns, about how many rows, a cheap identity."""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Iterator

from pipeline.manifest.delimited import read_delimited, read_header
from pipeline.manifest.folder import read_dir, walk_images
from pipeline.manifest.jsonl import read_jsonl
from pipeline.manifest.lines import lines, open_text, read_text
from pipeline.manifest.parquet import parquet_file, read_parquet
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow


def identity(spec: ManifestSpec) -> dict[str, object]:
    """A cheap identity for the resume check: size plus hashes of the head and tail."""
    if spec.kind == "dir":
        digest = hashlib.sha256()
        count = 0
        for rel, full in walk_images(spec.path):
            # surrogateescape: a file name that is not UTF-8 is a row to report, not a crash
            digest.update(f"{rel}\0{full.stat().st_size}\n".encode("utf-8", "surrogateescape"))
            count += 1
        return {"path": str(spec.path), "kind": "dir", "files": count, "sha256": digest.hexdigest()}
    size = spec.path.stat().st_size
    digest = hashlib.sha256()
    with spec.path.open("rb") as f:
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
        digest.update(f.read(1 << 20))
    return {"path": str(spec.path), "kind": spec.kind, "size": size, "sha256": digest.hexdigest()}


def read_rows(spec: ManifestSpec) -> Iterator[ManifestRow]:
    """Yield every data row in order; row numbers count from 0."""
    readers = {
        "csv": read_delimited,
        "tsv": read_delimited,
        "txt": read_text,
        "jsonl": read_jsonl,
        "parquet": read_parquet,
        "dir": read_dir,
    }
    yield from readers[spec.kind](spec)


def extra_columns(spec: ManifestSpec) -> tuple[str, ...]:
    """Extra column names known from a header (CSV/TSV/Parquet); JSONL extras vary by row.

    Reading the header also checks it, so a manifest without its URL column fails before
    any worker starts.
    """
    if spec.kind in ("csv", "tsv"):
        with open_text(spec) as f:
            header = read_header(
                csv.reader(lines(f, spec), delimiter="," if spec.kind == "csv" else "\t"), spec
            )
        return tuple(h for h in header if h not in (spec.url_column, spec.key_column))
    if spec.kind == "parquet":
        names = parquet_file(spec).schema_arrow.names
        return tuple(n for n in names if n not in (spec.url_column, spec.key_column))
    return ()


def count_rows(spec: ManifestSpec) -> int:
    """About how many data rows there are, fast: for a progress bar, not for bookkeeping.

    Text formats count line breaks (a quoted multi-line CSV field counts more than once);
    Parquet and folders are exact.
    """
    if spec.kind == "dir":
        return sum(1 for _ in walk_images(spec.path))
    if spec.kind == "parquet":
        return int(parquet_file(spec).metadata.num_rows)
    opener = gzip.open if spec.gzipped else open
    lines = 0
    last = b"\n"
    with opener(spec.path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"  # a last line without a line break
    return max(0, lines - (1 if spec.kind in ("csv", "tsv") else 0))
