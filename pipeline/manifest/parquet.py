"""Parquet manifests, streamed a record batch at a time (through ``pipeline/parquet.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline import parquet
from pipeline.errors import ManifestError, ManifestTruncated
from pipeline.manifest.rows import make_row
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow


def parquet_file(spec: ManifestSpec) -> Any:
    if not parquet.available():
        raise ManifestError("Parquet manifests need pyarrow: pip install 'pipeline[parquet]'")
    if spec.gzipped:
        raise ManifestError("a Parquet file is compressed inside; do not gzip it")
    try:
        return parquet.open_file(spec.path)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ManifestError(f"cannot read {spec.path.name} as Parquet: {exc}") from exc


def read_parquet(spec: ManifestSpec) -> Iterator[ManifestRow]:
    pf = parquet_file(spec)
    if spec.url_column not in pf.schema_arrow.names:
        raise ManifestError(f"{spec.path.name} has no '{spec.url_column}' column")
    row = 0
    batches = pf.iter_batches(batch_size=4096)  # streams: one batch in memory at a time
    while True:
        try:
            batch = next(batches, None)
            records = batch.to_pylist() if batch is not None else None
        except (OSError, ValueError, OverflowError) as exc:  # a damaged page; a date out of range
            raise ManifestTruncated(
                f"manifest {spec.path.name} cannot be read after row {row} ({exc})", row
            ) from exc
        if records is None:
            return
        for record in records:
            url = record.pop(spec.url_column, None)
            key = record.pop(spec.key_column, None)
            extra = {k: "" if v is None else _parquet_text(v) for k, v in record.items()}
            if url is not None and not isinstance(url, (str, bytes)):
                reason = f"'{spec.url_column}' is not a string ({type(url).__name__})"
                yield ManifestRow(row, row + 1, str(row), "", "", (), reason)
            else:
                text = None if url is None else _parquet_text(url)
                yield make_row(spec, row, row + 1, text, None if key is None else _parquet_text(key), extra)
            row += 1


def _parquet_text(value: object) -> str:
    """A cell as text: a binary cell holding UTF-8 is that text (bytes that are not UTF-8 come
    out as surrogates, which ``make_row`` reports); anything else its ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return value if isinstance(value, str) else str(value)
