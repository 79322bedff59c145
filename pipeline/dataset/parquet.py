"""A Parquet shard: the catalog columns, the key, the caption and the image bytes, a row group at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import parquet
from pipeline.catalog_export import parquet_type
from pipeline.dataset.samples import Sample
from pipeline.errors import UsageError

_ROW_GROUP_SAMPLES = 256  # Parquet: samples per row group (their bytes are held until written)
_ROW_GROUP_BYTES = 64 * 1024 * 1024


class ParquetShard:
    """A Parquet shard: the catalog columns, ``__key__``, the caption and the image bytes;
    written a row group at a time, so memory holds one group, not the shard."""

    def __init__(self, path: Path, columns: list[str], image_fields: list[str]) -> None:
        self.samples = 0
        self._fields = image_fields
        # The caption is the manifest's own column, already among ``columns``.
        fields = [("__key__", "string")] + [(c, parquet_type(c)) for c in columns]
        fields += [(_column_of(f), "binary") for f in image_fields]
        self._writer = parquet.Writer(path, fields)
        self._batch: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, sample: Sample) -> None:
        record = {"__key__": sample.key, **sample.record}
        by_column = {_column_of(field): data for field, data in sample.image_bytes()}
        for field in self._fields:
            record[_column_of(field)] = by_column.get(_column_of(field))
        self._batch.append(record)
        self._bytes += sample.size
        self.samples += 1
        if len(self._batch) >= _ROW_GROUP_SAMPLES or self._bytes >= _ROW_GROUP_BYTES:
            self._write()

    def close(self) -> None:
        self._write()
        self._writer.close()

    def _write(self) -> None:
        if self._batch:
            self._writer.write(self._batch)
        self._batch, self._bytes = [], 0


def _column_of(field: str) -> str:
    """``jpg`` → ``image``, ``128.jpg`` → ``image_128``, ``original.png`` → ``original``."""
    head = field.rsplit(".", 1)[0] if "." in field else ""
    if not head:
        return "image"
    return "original" if head == "original" else f"image_{head}"


def require_pyarrow() -> None:
    if not parquet.available():
        raise UsageError("--output-format parquet needs pyarrow: pip install 'pipeline[parquet]'")
