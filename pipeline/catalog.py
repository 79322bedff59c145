"""Stage 6: the SQLite catalog, where all state of a run lives.

Only the parent process writes it, in transactions of finished rows (every second or so),
each with the done marks of the shards it completes. A row in ``items`` is final: a resumed
run does not fetch it again. A shard in ``shards`` has every one of its rows in ``items``; a
shard without its mark is resumed at the rows it still lacks. WAL mode lets ``pipeline
status`` read while a run writes.

The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS[i]`` is the SQL that moves
a catalog from version ``i`` to ``i + 1``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pipeline.errors import CatalogError, PipelineError, StorageError, UsageError
from pipeline.models import ItemResult, ShardDone, ShardReport, Status

CATALOG_NAME = "catalog.sqlite"

ITEM_COLUMNS = (
    "row", "shard_id", "key", "url", "final_url", "status", "error_class", "error_message",
    "http_status", "attempts", "redirects", "mime", "bytes", "sha256", "dhash", "phash",
    "width", "height", "format", "mode", "n_frames", "thumbnails", "original_path",
    "fetch_ms", "process_ms", "extra", "updated_at",
)  # fmt: skip


_V1 = """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE shards (
            shard_id INTEGER PRIMARY KEY,
            rows INTEGER NOT NULL,
            ok INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            fetched INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            elapsed_s REAL NOT NULL,
            worker_pid INTEGER,
            done_at REAL NOT NULL
        );
        CREATE TABLE items (
            row INTEGER PRIMARY KEY,
            shard_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            url TEXT NOT NULL,
            final_url TEXT,
            status TEXT NOT NULL,
            error_class TEXT,
            error_message TEXT,
            http_status INTEGER,
            attempts INTEGER NOT NULL,
            redirects INTEGER NOT NULL,
            mime TEXT,
            bytes INTEGER,
            sha256 TEXT,
            dhash TEXT,
            phash TEXT,
            width INTEGER,
            height INTEGER,
            format TEXT,
            mode TEXT,
            n_frames INTEGER,
            thumbnails TEXT,
            original_path TEXT,
            fetch_ms REAL,
            process_ms REAL,
            extra TEXT,
            updated_at REAL NOT NULL
        );
        CREATE INDEX items_shard ON items (shard_id);
        CREATE INDEX items_sha256 ON items (sha256);
        CREATE INDEX items_status ON items (status, error_class);
"""

# Written by `pipeline dedup` (pipeline/dedup/): one row per member of a duplicate group
# (ungrouped rows have none), and the thumbnail-check verdicts, cached by content so that a
# rerun after more rows were added only checks new pairs.
_V2 = """
        CREATE TABLE dedup_members (
            row INTEGER PRIMARY KEY,
            group_id INTEGER NOT NULL,          -- the representative's row
            representative INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('exact', 'near')),  -- relative to the representative
            distance INTEGER NOT NULL,          -- pHash bits from the representative (exact: 0)
            join_distance INTEGER NOT NULL      -- pHash bits of the pair that joined it to the group
        );
        CREATE INDEX dedup_members_group ON dedup_members (group_id);
        CREATE TABLE dedup_pairs (
            a TEXT NOT NULL,                    -- sha256, a < b
            b TEXT NOT NULL,
            version INTEGER NOT NULL,           -- of the check (thumbcheck.VERSION)
            similarity REAL NOT NULL,
            PRIMARY KEY (a, b)
        ) WITHOUT ROWID;
"""

# Why `pipeline dedup` took each checked pair: the path of the thumbnail check that matched
# ('aligned': the whole picture or a crop; 'geometry': a turn) and what it found.
_V3 = """
        ALTER TABLE dedup_pairs ADD COLUMN path TEXT;
        ALTER TABLE dedup_pairs ADD COLUMN found TEXT;
"""

# MIGRATIONS[i] is the SQL script that moves a catalog from schema i to i + 1.
MIGRATIONS: list[str] = [_V1, _V2, _V3]


@dataclass(frozen=True, slots=True)
class CatalogSummary:
    rows: int
    by_status: dict[str, int]
    by_error: dict[str, int]
    shards_done: int
    shards_total: int | None  # known once a run has read the whole manifest
    bytes: int
    fingerprint: dict[str, Any] | None = field(default=None)


def _item_values(item: ItemResult, shard_id: int, now: float) -> tuple[Any, ...]:
    img = item.image
    thumbs = (
        json.dumps([{"size": t.size, "width": t.width, "height": t.height, "path": t.path} for t in img.thumbnails])
        if img
        else None
    )
    return (
        item.row, shard_id, item.key, item.url, item.final_url, item.status.value,
        item.error_class.value if item.error_class else None, item.error_message,
        item.http_status, item.attempts, item.redirects, item.mime,
        img.bytes if img else None, img.sha256 if img else None,
        img.dhash if img else None, img.phash if img else None,
        img.width if img else None, img.height if img else None,
        img.format if img else None, img.mode if img else None,
        img.n_frames if img else None, thumbs, img.original_path if img else None,
        round(item.fetch_ms, 2), round(img.elapsed_ms, 2) if img else None,
        json.dumps(dict(item.extra)) if item.extra else None, now,
    )  # fmt: skip


class Catalog:
    """The run's SQLite file. Use as a context manager, or call ``close()``."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise UsageError(f"no catalog at {self.path}: is this a pipeline output folder?")
        try:
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode survives a crash of the process; only power loss can drop
                # the last shards, and those simply run again.
                self.db.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
            else:
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # --- schema --------------------------------------------------------------------------

    def _check_version(self) -> int:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise CatalogError(
                f"{self.path} was written by a newer pipeline (schema {version}); upgrade pipeline"
            )
        return int(version)

    def _migrate(self) -> None:
        version = self._check_version()
        for step, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript() commits first, so the script carries its own transaction.
            self.db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {step}; COMMIT;")

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # --- meta ----------------------------------------------------------------------------

    def get_meta(self, name: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, name: str, value: Any) -> None:
        with self.transaction():
            self._set_meta(name, value)

    def _set_meta(self, name: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, json.dumps(value, sort_keys=True)),
        )

    # --- run state -----------------------------------------------------------------------

    def done_shards(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT shard_id FROM shards")}

    def shards_with_failures(self) -> set[int]:
        """Shards holding rows that ``--retry-failed`` fetches again (failed, not invalid or
        opted out). One id per shard, so this stays small however many rows failed."""
        return {
            r[0]
            for r in self.db.execute("SELECT DISTINCT shard_id FROM items WHERE status = ?", (Status.FAILED.value,))
        }

    def failed_rows(self, shard_id: int) -> frozenset[int]:
        """The failed rows of one shard (read shard by shard: memory stays flat)."""
        return frozenset(
            r[0]
            for r in self.db.execute(
                "SELECT row FROM items WHERE shard_id = ? AND status = ?", (shard_id, Status.FAILED.value)
            )
        )

    def write_shard(self, report: ShardReport, *, extra_columns: tuple[str, ...] = ()) -> None:
        """Commit one whole shard: its rows and its done mark, in one transaction."""
        done = ShardDone(report.shard_id, report.fetched, report.bytes_downloaded, report.elapsed_s, report.worker_pid)
        self.write_rows([(report.shard_id, item) for item in report.items], [done], extra_columns=extra_columns)

    def write_rows(
        self,
        rows: list[tuple[int, ItemResult]],
        done: list[ShardDone] = (),  # type: ignore[assignment]
        *,
        extra_columns: tuple[str, ...] = (),
    ) -> None:
        """Commit finished rows, ``(shard id, item)``, and the done marks of the shards they
        complete, in one transaction: a shard is marked done only together with its last row,
        so after a kill every row in ``items`` is final and every shard in ``shards`` whole."""
        now = time.time()
        placeholders = ", ".join("?" for _ in ITEM_COLUMNS)
        try:
            with self.transaction():
                self.db.executemany(
                    f"INSERT OR REPLACE INTO items ({', '.join(ITEM_COLUMNS)}) VALUES ({placeholders})",
                    [_item_values(item, shard_id, now) for shard_id, item in rows],
                )
                for shard in done:
                    self._mark_done(shard, now)
                if extra_columns:
                    self._merge_extra_columns(extra_columns)
        except sqlite3.OperationalError as exc:
            raise _write_error(self.path, exc) from exc

    def _mark_done(self, shard: ShardDone, now: float) -> None:
        # Counts come from items, not from this invocation: a resumed or --retry-failed shard
        # ran only part of its rows here (its bytes were once those of the retried rows alone).
        ok, total, fetched, nbytes = self.db.execute(
            "SELECT COUNT(*) FILTER (WHERE status = 'ok'), COUNT(*), COUNT(*) FILTER (WHERE attempts > 0), "
            "COALESCE(SUM(bytes), 0) FROM items WHERE shard_id = ?",
            (shard.shard_id,),
        ).fetchone()
        self.db.execute(
            "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (shard.shard_id, total, ok, total - ok, fetched, nbytes,
             round(shard.elapsed_s, 3), shard.worker_pid, now),
        )  # fmt: skip

    def _merge_extra_columns(self, extra_columns: tuple[str, ...]) -> None:
        known = self.get_meta("extra_columns") or []
        merged = known + [c for c in extra_columns if c not in known]
        if merged != known:
            self._set_meta("extra_columns", merged)

    def committed_rows(self, shard_id: int) -> frozenset[int]:
        """Rows of a shard already in the catalog (a resumed shard runs only the others)."""
        return frozenset(r[0] for r in self.db.execute("SELECT row FROM items WHERE shard_id = ?", (shard_id,)))

    def started_shards(self) -> set[int]:
        """Shards with some rows committed but no done mark: an earlier run was killed mid-shard."""
        return {
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT shard_id FROM items WHERE shard_id NOT IN (SELECT shard_id FROM shards)"
            )
        }

    def reset(self) -> None:
        """Forget every row and shard (``--force``); stored files stay, they are content-addressed."""
        with self.transaction():
            self.db.execute("DELETE FROM items")
            self.db.execute("DELETE FROM shards")
            self.db.execute("DELETE FROM dedup_members")  # stale groups; dedup_pairs stay valid
            self.db.execute("DELETE FROM meta")

    # --- reading -------------------------------------------------------------------------

    def summary(self) -> CatalogSummary:
        by_status = dict(self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        by_error = dict(
            self.db.execute(
                "SELECT error_class, COUNT(*) FROM items WHERE error_class IS NOT NULL "
                "GROUP BY error_class ORDER BY COUNT(*) DESC"
            ).fetchall()
        )
        shards_done, nbytes = self.db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM shards").fetchone()
        return CatalogSummary(
            rows=sum(by_status.values()),
            by_status=by_status,
            by_error=by_error,
            shards_done=shards_done,
            shards_total=self.get_meta("total_shards"),
            bytes=nbytes,
            fingerprint=self.get_meta("fingerprint"),
        )

    def iter_items(self, where: str = "", params: tuple[Any, ...] = ()) -> Iterator[sqlite3.Row]:
        """Stream item rows in manifest order (``where`` is a trusted SQL fragment)."""
        sql = f"SELECT * FROM items {('WHERE ' + where) if where else ''} ORDER BY row"
        yield from self.db.execute(sql, params)


def _write_error(path: Path, exc: sqlite3.OperationalError) -> PipelineError:
    if "full" in str(exc) or "disk" in str(exc) or "readonly" in str(exc):
        return StorageError(f"cannot write the catalog {path}: {exc}")
    return CatalogError(f"cannot write the catalog {path}: {exc}")


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
