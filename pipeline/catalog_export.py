"""Stage 7: the catalog out as CSV, JSONL or Parquet, one row per manifest row.

Rows stream from SQLite in manifest order, so exporting ten million rows needs no more
memory than exporting ten. Extra manifest columns become columns of their own; each
thumbnail size gets a ``thumb_<size>`` path column (relative to OUT).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pipeline import parquet
from pipeline.boxes import size_order
from pipeline.catalog import ITEM_COLUMNS, Catalog
from pipeline.errors import UsageError
from pipeline.locate import RunPlace, find_run

FORMATS = ("csv", "jsonl", "parquet", "webdataset")
_INTERNAL = ("shard_id", "thumbnails", "extra", "updated_at")
_BATCH = 10_000


# One row per distinct image: ok rows that are no group's non-representative member.
_UNIQUE = "status = 'ok' AND row NOT IN (SELECT row FROM dedup_members WHERE row != representative)"


def export(
    out: str | Path,
    dest: str | Path | None = None,
    *,
    format: str = "csv",
    unique: bool = False,
    samples_per_shard: int = 10_000,
    catalog: str | Path | None = None,
) -> int:
    """Write the catalog of ``out`` to ``dest`` (``None`` or ``-``: standard output).

    ``out`` and ``catalog`` (the run's ``--catalog``) name the run as every command does
    (``locate.find_run``: OUT, OUT and its catalog, or the catalog file alone).

    ``unique``: only one row per distinct image (needs ``pipeline dedup`` first).
    ``webdataset``: the ok rows as tar shards in the folder (or fsspec URL) ``dest``.
    Returns the number of rows (samples) written.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    place = find_run(out, catalog)
    with Catalog(place.catalog, readonly=True) as db:
        if unique and db.get_meta("dedup") is None:
            raise UsageError(f"--unique needs duplicate groups: run `pipeline dedup {out}` first")
        if format == "webdataset":
            return _export_dataset(db, place, dest, unique=unique, per_shard=samples_per_shard)
        columns = export_columns(db)
        records = (flatten(row, columns) for row in db.iter_items(_UNIQUE if unique else ""))
        if format == "parquet":
            if dest is None or str(dest) == "-":
                raise UsageError("Parquet goes to a file: give --output FILE")
            return _write_parquet(records, columns, Path(dest))
        if dest is None or str(dest) == "-":
            return _write_text(records, columns, sys.stdout, format)
        with open(dest, "w", encoding="utf-8", newline="") as f:
            return _write_text(records, columns, f, format)


def _export_dataset(catalog: Catalog, place: RunPlace, dest: str | Path | None, *, unique: bool, per_shard: int) -> int:
    from pipeline.dataset.export import export_dataset  # it builds on this module

    if dest is None or str(dest) == "-":
        raise UsageError("a WebDataset goes to a folder: give --output DIR")
    if per_shard < 1:
        raise UsageError("--samples-per-shard must be at least 1")
    # The images: the run's files (OUT), or for an object-store run the local folder its
    # workers wrote (recorded in the catalog by the run).
    root = Path(catalog.get_meta("files_root") or (place.catalog.parent if place.remote else place.out))
    if not root.is_dir():
        raise UsageError(f"no image files at {root}: give the run's OUT folder")
    options = (catalog.get_meta("fingerprint") or {}).get("options", {})
    return export_dataset(
        catalog, root, dest, where=_UNIQUE if unique else "", per_shard=per_shard,
        caption_column=options.get("caption_column"),
    )  # fmt: skip


def export_columns(catalog: Catalog) -> list[str]:
    fingerprint = catalog.get_meta("fingerprint") or {}
    sizes = fingerprint.get("options", {}).get("sizes", [])
    fixed = [c for c in ITEM_COLUMNS if c not in _INTERNAL]
    thumbs = [f"thumb_{s}" for s in sorted(sizes, key=size_order)]  # 256, "512x384", ...
    extras = [_extra_name(c, fixed) for c in catalog.get_meta("extra_columns") or []]
    return fixed + thumbs + extras


def _extra_name(column: str, fixed: list[str]) -> str:
    return f"extra_{column}" if column in fixed or column.startswith("thumb_") else column


def flatten(row: sqlite3.Row, columns: list[str]) -> dict[str, Any]:
    record = {c: row[c] for c in ITEM_COLUMNS if c not in _INTERNAL}
    for t in json.loads(row["thumbnails"]) if row["thumbnails"] else []:
        record[f"thumb_{t['size']}"] = t["path"]
    fixed = [c for c in ITEM_COLUMNS if c not in _INTERNAL]
    for name, value in (json.loads(row["extra"]) if row["extra"] else {}).items():
        record[_extra_name(name, fixed)] = value
    return {c: record.get(c) for c in columns}


def _write_text(records: Iterator[dict[str, Any]], columns: list[str], f: IO[str], format: str) -> int:
    count = 0
    if format == "csv":
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for count, record in enumerate(records, start=1):
            writer.writerow(record)
    else:
        for count, record in enumerate(records, start=1):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return count


_NUMERIC = {"row": "int64", "http_status": "int32", "attempts": "int32", "redirects": "int32", "bytes": "int64",
            "width": "int32", "height": "int32", "n_frames": "int32", "fetch_ms": "float64",
            "process_ms": "float64"}  # fmt: skip


def parquet_type(column: str) -> str:
    """The Arrow type (alias) of an export column (text unless numeric); also dataset/parquet.py's."""
    return _NUMERIC.get(column, "string")


def _write_parquet(records: Iterator[dict[str, Any]], columns: list[str], dest: Path) -> int:
    if not parquet.available():
        raise UsageError("Parquet export needs pyarrow: pip install 'pipeline[parquet]'")
    count = 0
    tmp = dest.with_name(dest.name + ".tmp")
    with parquet.Writer(tmp, [(c, parquet_type(c)) for c in columns]) as writer:
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) == _BATCH:
                writer.write(batch)
                count += len(batch)
                batch = []
        if batch:
            writer.write(batch)
            count += len(batch)
    tmp.replace(dest)
    return count
