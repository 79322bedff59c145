"""Combine the catalogs of static partitions into one: ``pipeline merge OUT``.

A run split with ``--partitions N --partition I`` leaves one catalog per partition,
``OUT/catalog-I-of-N.sqlite``, while the image files are shared (content-addressed, so two
partitions writing the same image write the same bytes to the same name). Partitions own
disjoint shards (``shard_id % N``), so merging is a union of rows.

Merging is idempotent: rows are copied with ``INSERT OR REPLACE`` keyed by manifest row and
shard id, timestamps included, so merging again (e.g. after a late partition finishes)
gives the same catalog. It refuses partitions of different runs (different fingerprints,
e.g. another manifest or other ``--sizes``), and reports partitions that are missing or did
not finish, after merging the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.catalog import ITEM_COLUMNS, Catalog
from pipeline.errors import ResumeRefused, UsageError
from pipeline.locate import catalog_path

PARTITION_FILE = re.compile(r"catalog-(\d+)-of-(\d+)\.sqlite")
_SHARD_COLUMNS = "shard_id, rows, ok, failed, fetched, bytes, elapsed_s, worker_pid, done_at"


@dataclass(frozen=True, slots=True)
class MergeReport:
    catalog: Path
    num_workers: int
    merged: tuple[int, ...]  # partition indices whose rows are in the merged catalog
    missing: tuple[int, ...]  # no catalog file yet
    incomplete: tuple[int, ...]  # a catalog, but not every one of its shards done
    rows: int
    shards_done: int
    shards_total: int | None

    @property
    def complete(self) -> bool:
        return not self.missing and not self.incomplete


def find_partitions(folder: Path) -> tuple[int, dict[int, Path]]:
    """``(N, {index: catalog file})`` for the partition catalogs in ``folder``."""
    found: dict[int, dict[int, Path]] = {}
    for path in folder.glob("catalog-*-of-*.sqlite"):
        match = PARTITION_FILE.fullmatch(path.name)
        if match:
            index, n = int(match[1]), int(match[2])
            if index < n:
                found.setdefault(n, {})[index] = path
    if not found:
        raise UsageError(f"no partition catalogs (catalog-<i>-of-<n>.sqlite) in {folder}")
    if len(found) > 1:
        counts = ", ".join(str(n) for n in sorted(found))
        raise UsageError(
            f"{folder} holds partitions of runs with different --partitions ({counts}); keep one"
        )
    ((n, parts),) = found.items()
    return n, parts


def merge(folder: str | Path, *, output: str | Path | None = None) -> MergeReport:
    """Merge the partition catalogs in ``folder`` into ``output`` (default ``folder/catalog.sqlite``)."""
    folder = Path(folder)
    n, parts = find_partitions(folder)
    target = catalog_path(folder, output)  # the catalog a whole run of the folder reads
    metas = {index: _read_meta(path, index, n) for index, path in sorted(parts.items())}
    fingerprint = _same_fingerprint(metas, folder)
    incomplete = tuple(
        i for i, m in metas.items() if m["total_shards"] is None or m["shards_done"] < m["total_shards"]
    )
    totals = {m["manifest_shards"] for m in metas.values() if m["manifest_shards"] is not None}
    with Catalog(target) as out:
        stored = out.get_meta("fingerprint")
        if stored is None:
            out.set_meta("fingerprint", fingerprint)
        elif _comparable(stored) != _comparable(fingerprint):
            raise ResumeRefused(f"{target} holds the catalog of another run; merge into another --output")
        for path in parts.values():
            _copy_rows(out, path)
        extras: list[str] = list(out.get_meta("extra_columns") or [])
        for meta in metas.values():
            extras += [c for c in meta["extra_columns"] if c not in extras]
        if extras:
            out.set_meta("extra_columns", extras)
        if totals:
            out.set_meta("total_shards", max(totals))
        summary = out.summary()
    return MergeReport(
        catalog=target,
        num_workers=n,
        merged=tuple(sorted(parts)),
        missing=tuple(i for i in range(n) if i not in parts),
        incomplete=incomplete,
        rows=summary.rows,
        shards_done=summary.shards_done,
        shards_total=summary.shards_total,
    )


def _read_meta(path: Path, index: int, n: int) -> dict[str, Any]:
    with Catalog(path, readonly=True) as part:
        partition = part.get_meta("partition")
        if partition != {"num_workers": n, "worker_index": index}:
            raise UsageError(f"{path.name} holds partition {partition}, not {index} of {n}: was it renamed?")
        s = part.summary()
        return {
            "fingerprint": s.fingerprint,
            "total_shards": s.shards_total,
            "shards_done": s.shards_done,
            "manifest_shards": part.get_meta("manifest_shards"),
            "extra_columns": part.get_meta("extra_columns") or [],
        }


def _comparable(fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """A fingerprint without the manifest's path: machines may mount it at different places
    (its size and content hashes still have to agree)."""
    fp = dict(fingerprint or {})
    fp["manifest"] = {k: v for k, v in (fp.get("manifest") or {}).items() if k != "path"}
    return fp


def _same_fingerprint(metas: dict[int, dict[str, Any]], folder: Path) -> dict[str, Any]:
    first_index, first = next(iter(metas.items()))
    for index, meta in metas.items():
        if _comparable(meta["fingerprint"]) != _comparable(first["fingerprint"]):
            raise UsageError(
                f"partitions {first_index} and {index} in {folder} ran another manifest or other "
                "options; rerun the odd one with the same command"
            )
    return first["fingerprint"]


def _copy_rows(out: Catalog, path: Path) -> None:
    """Copy one partition's items and shards in one transaction (ATTACH cannot be in one)."""
    columns = ", ".join(ITEM_COLUMNS)
    out.db.execute("ATTACH DATABASE ? AS part", (f"file:{path}?mode=ro",))
    try:
        with out.transaction():
            out.db.execute(f"INSERT OR REPLACE INTO items ({columns}) SELECT {columns} FROM part.items")
            out.db.execute(
                f"INSERT OR REPLACE INTO shards ({_SHARD_COLUMNS}) SELECT {_SHARD_COLUMNS} FROM part.shards"
            )
    finally:
        out.db.execute("DETACH DATABASE part")
