"""``pipeline export --format webdataset``: a catalog's ok rows written as a new dataset, in one go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.catalog_export import export_columns
from pipeline.config import is_url
from pipeline.dataset.paths import EXTENSIONS, STATS_NAME
from pipeline.dataset.samples import read_sample
from pipeline.dataset.shards import Shards
from pipeline.dataset.sinks import open_sink
from pipeline.dataset.tar import TarShard
from pipeline.errors import UsageError
from pipeline.store.base import TMP_DIR


def export_dataset(
    catalog: Catalog,
    root: Path,
    dest: Path | str,
    *,
    where: str = "",
    format: str = "webdataset",
    per_shard: int = 10_000,
    caption_column: str | None = None,
) -> int:
    """Write the ok rows matching ``where`` (a trusted SQL fragment) as a new dataset under
    ``dest`` (a folder or an fsspec URL), images read from ``root``; returns the samples."""
    if format != "webdataset":
        raise UsageError(f"export writes a dataset as webdataset, not {format!r}")
    if is_url(dest):
        import tempfile

        temp = Path(tempfile.mkdtemp(prefix="pipeline-export-"))
    else:
        temp = Path(dest) / TMP_DIR
    sink = open_sink(dest, temp)
    columns = export_columns(catalog)
    shards = Shards(TarShard, temp=temp, ext=EXTENSIONS[format], per_shard=per_shard)
    condition = f"status = 'ok'{f' AND {where}' if where else ''}"
    listed: list[dict[str, Any]] = []
    count = 0
    try:
        for item in catalog.iter_items(condition):
            part = shards.add(item["row"], read_sample(item, columns, root, caption_column))
            count += 1
            if part is not None:
                sink.commit(part.path, part.name)
                listed.append({"name": part.name, "samples": len(part.rows), "bytes": part.bytes})
        part = shards.close()
        if part is not None:
            sink.commit(part.path, part.name)
            listed.append({"name": part.name, "samples": len(part.rows), "bytes": part.bytes})
    except BaseException:
        shards.abandon()
        raise
    summary = {"format": format, "samples_per_shard": per_shard, "samples": count, "shards": listed}
    sink.write_bytes(json.dumps(summary, indent=2).encode(), STATS_NAME)
    _remove_empty(temp)
    return count


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty or already gone: left for the next run's clear_temp
