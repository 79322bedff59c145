"""Parquet files through pyarrow, its only importer (``pipeline[parquet]``): opened to read, written a row group at a time.

pyarrow is imported inside the calls, so that importing this module costs nothing and a
core install without pyarrow fails only where Parquet is asked for: each caller checks
``available()`` first and says what needs it (a manifest, an export, a dataset).
Columns are given as Arrow type aliases (``"string"``, ``"int64"``, ``"binary"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self


def available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def open_file(path: Path) -> Any:
    """A ``pyarrow.parquet.ParquetFile``: ``schema_arrow.names``, ``metadata.num_rows``,
    ``iter_batches(batch_size=…)`` (each batch's ``to_pylist()``). Raises ``OSError`` or
    ``ValueError`` (``ArrowInvalid``) for a file that is not Parquet."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


class Writer:
    """A Parquet file of the columns ``(name, type alias)``, written a list of records (dicts)
    at a time: each ``write`` is one row group. A context manager, or call ``close()``."""

    def __init__(self, path: Path, columns: list[tuple[str, str]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema([(name, pa.type_for_alias(alias)) for name, alias in columns])
        self._writer = pq.ParquetWriter(path, self._schema)

    def write(self, records: list[dict[str, Any]]) -> None:
        self._writer.write_table(self._pa.Table.from_pylist(records, schema=self._schema))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
