"""The run's dataset, kept by the parent after each commit: samples packed, shards handed over and recorded, stats rewritten.

The tables are created here (``IF NOT EXISTS``) rather than as a catalog migration: only
runs with a dataset have them, and older pipelines still open the catalog.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.catalog_export import export_columns
from pipeline.config import RunConfig
from pipeline.dataset.parquet import ParquetShard, require_pyarrow
from pipeline.dataset.paths import EXTENSIONS, STATS_NAME, dataset_dir
from pipeline.dataset.samples import image_fields, read_sample
from pipeline.dataset.shards import Part, ShardFile, Shards
from pipeline.dataset.sinks import LocalSink, open_sink
from pipeline.dataset.tar import TarShard
from pipeline.errors import UsageError
from pipeline.store.base import TMP_DIR

_SELECT_CHUNK = 500  # rows asked for in one IN (…): under SQLite's variable limit

_TABLES = """
    CREATE TABLE IF NOT EXISTS dataset_parts (
        part INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        samples INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        written_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS dataset_samples (
        row INTEGER PRIMARY KEY,
        part INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS dataset_samples_part ON dataset_samples (part);
"""


def check_caption(config: RunConfig, columns: tuple[str, ...]) -> None:
    """``--caption-column`` names a column of the manifest (``columns``: its extra columns,
    empty for a JSONL manifest, whose columns show only in its rows)."""
    if config.caption_column is not None and columns and config.caption_column not in columns:
        raise UsageError(
            f"--caption-column {config.caption_column}: the manifest has no such column (it has {', '.join(columns)})"
        )


class DatasetWriter:
    """The run's dataset, driven by the runner after each commit (``add``) and at its end
    (``finish``); the single writer of its catalog tables, on the runner's thread."""

    def __init__(self, catalog: Catalog, config: RunConfig, root: Path) -> None:
        self.catalog, self.config, self.root = catalog, config, Path(root)
        catalog.db.executescript(_TABLES)
        if self.root != config.out:  # where `pipeline export` and `dedup` find the images
            catalog.set_meta("files_root", str(self.root.resolve()))
        partition = config.partition
        temp = self.root / (f"{TMP_DIR}/{partition}" if partition else TMP_DIR)
        self.sink = open_sink(dataset_dir(config.out), temp)
        self.columns = export_columns(catalog)
        fmt = config.output_format
        fields = image_fields(config)
        if fmt == "parquet":
            require_pyarrow()

        def make(path: Path) -> ShardFile:
            if fmt == "parquet":
                return ParquetShard(path, self.columns, fields)
            return TarShard(path)

        self._forget_stale()
        recorded = self._recorded()
        self.shards = Shards(
            make,
            temp=temp,
            ext=EXTENSIONS[fmt],
            per_shard=config.samples_per_shard,
            first=max(recorded, default=-1) + 1,
            prefix=f"{partition}-" if partition else "",
        )
        self.stats_name = f"_stats-{partition}.json" if partition else STATS_NAME
        self._uploads = ThreadPoolExecutor(1, thread_name_prefix="pipeline-dataset")
        self._uploading: tuple[Part, Future[None]] | None = None
        self._remove_unrecorded(recorded)
        self._pack(self._pending_rows())

    # -- driven by the runner ----------------------------------------------------------------

    def add(self, rows: Iterable[int]) -> None:
        """Pack the ok rows among ``rows``, just committed to the catalog."""
        self._pack(sorted(rows))
        self._record_finished()

    def finish(self) -> None:
        """Write the open shard and wait for every upload: the dataset is then complete."""
        part = self.shards.close()
        if part is not None:
            self._upload(part)
        self._wait()
        self._write_stats()
        self._uploads.shutdown()

    def abandon(self) -> None:
        """The run stops on an error: keep what is whole (a finished upload is recorded)."""
        self.shards.abandon()
        with contextlib.suppress(Exception):  # the run's own error is the one reported
            self._wait()
        self._uploads.shutdown(wait=False, cancel_futures=True)

    # -- internals -----------------------------------------------------------------------------

    def _forget_stale(self) -> None:
        """After ``--force`` reset the catalog, its rows are gone but these tables (not the
        catalog module's) still list the old run's shards: forget them, and the shards go
        with ``_remove_unrecorded``."""
        db = self.catalog.db
        stale = db.execute(
            "SELECT 1 FROM dataset_samples WHERE row NOT IN (SELECT row FROM items WHERE status = 'ok') LIMIT 1"
        ).fetchone()
        if stale:
            with self.catalog.transaction():
                db.execute("DELETE FROM dataset_samples")
                db.execute("DELETE FROM dataset_parts")

    def _recorded(self) -> set[int]:
        return {r[0] for r in self.catalog.db.execute("SELECT part FROM dataset_parts")}

    def _remove_unrecorded(self, recorded: set[int]) -> None:
        """A shard written but not recorded (killed in between) holds rows that are packed
        again now: it goes, so that no reader sees those samples twice."""
        wanted = re.compile(
            rf"{re.escape(self.shards.prefix)}(\d{{5,}})\.{EXTENSIONS[self.config.output_format]}"
        )
        for name in self.sink.names():
            match = wanted.fullmatch(name)
            if match and int(match.group(1)) not in recorded:
                self.sink.remove(name)

    def _pending_rows(self) -> Iterator[int]:
        """Ok rows in the catalog but in no recorded shard (an earlier run stopped first)."""
        cursor = self.catalog.db.execute(
            "SELECT row FROM items WHERE status = 'ok' AND row NOT IN (SELECT row FROM dataset_samples) ORDER BY row"
        )
        # At most the rows of one shard plus those committed in the last moments of the run
        # that stopped: small, so read at once (packing commits on this connection).
        return iter([r[0] for r in cursor.fetchall()])

    def _pack(self, rows: Iterable[int]) -> None:
        batch: list[int] = []
        for row in rows:
            batch.append(row)
            if len(batch) == _SELECT_CHUNK:
                self._pack_some(batch)
                batch = []
        if batch:
            self._pack_some(batch)

    def _pack_some(self, rows: list[int]) -> None:
        self.columns = export_columns(self.catalog)  # a JSONL manifest's columns grow as rows come
        marks = ", ".join("?" for _ in rows)
        # Read before packing: recording a shard commits on this connection meanwhile.
        for item in list(self.catalog.iter_items(f"status = 'ok' AND row IN ({marks})", tuple(rows))):
            sample = read_sample(item, self.columns, self.root, self.config.caption_column)
            part = self.shards.add(item["row"], sample)
            if part is not None:
                self._upload(part)

    def _upload(self, part: Part) -> None:
        """Hand a finished shard to the upload thread, after the one before it is recorded
        (one shard waits at most: bounded disk, and at most one unrecorded shard after a kill)."""
        self._wait()
        self._uploading = (part, self._uploads.submit(self.sink.commit, part.path, part.name))
        if isinstance(self.sink, LocalSink):
            self._wait()  # a rename: record it now, not at the next commit of rows

    def _record_finished(self) -> None:
        if self._uploading is not None and self._uploading[1].done():
            self._wait()

    def _wait(self) -> None:
        if self._uploading is None:
            return
        part, future = self._uploading
        self._uploading = None
        future.result()  # StorageError: the run stops, the rerun packs these rows again
        with self.catalog.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO dataset_samples (row, part) VALUES (?, ?)",
                           [(row, part.part) for row in part.rows])  # fmt: skip
            db.execute(
                "INSERT OR REPLACE INTO dataset_parts VALUES (?, ?, ?, ?, ?)",
                (part.part, part.name, len(part.rows), part.bytes, time.time()),
            )
        self._write_stats()

    def _write_stats(self) -> None:
        self.sink.write_bytes(
            json.dumps(stats(self.catalog, self.config), indent=2).encode(), self.stats_name
        )


def stats(catalog: Catalog, config: RunConfig) -> dict[str, Any]:
    """What ``_stats.json`` holds: counts per status and error class, and every shard."""
    summary = catalog.summary()
    parts = catalog.db.execute(
        "SELECT part, name, samples, bytes FROM dataset_parts ORDER BY part"
    ).fetchall()
    return {
        "format": config.output_format,
        "samples_per_shard": config.samples_per_shard,
        "rows": summary.rows,
        "by_status": summary.by_status,
        "by_error": summary.by_error,
        "samples": sum(p["samples"] for p in parts),
        "shards": [{"name": p["name"], "samples": p["samples"], "bytes": p["bytes"]} for p in parts],
        "complete": summary.shards_total is not None and summary.shards_done >= summary.shards_total,
    }
