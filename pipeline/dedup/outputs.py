"""duplicates.csv and duplicates.json from the groups in the catalog."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from pipeline.catalog import Catalog
from pipeline.errors import StorageError

CSV_COLUMNS = ("group_id", "key", "url", "sha256", "kind", "distance", "is_representative")

_GROUPED = """
    SELECT m.group_id, i.key, i.url, i.sha256, m.kind, m.distance, m.row = m.representative AS is_rep,
           i.row, i.width, i.height, i.format, i.bytes, i.thumbnails, m.join_distance
    FROM dedup_members m JOIN items i ON i.row = m.row
    JOIN (SELECT group_id, COUNT(*) AS n FROM dedup_members GROUP BY group_id) g ON g.group_id = m.group_id
    ORDER BY g.n DESC, m.group_id, is_rep DESC, i.row
"""


def iter_grouped(catalog: Catalog) -> Iterator[sqlite3.Row]:
    """Members of every group: largest groups first, representative first within a group."""
    yield from catalog.db.execute(_GROUPED)


def write_outputs(catalog: Catalog, csv_path: Path, json_path: Path) -> None:
    """duplicates.csv and duplicates.json (imagededup's ``find_duplicates`` shape), each
    written whole under a temp name first."""
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        _write_outputs(catalog, csv_path, json_path)
    except OSError as exc:
        raise StorageError(f"cannot write the duplicates files: {exc}") from exc


def _write_outputs(catalog: Catalog, csv_path: Path, json_path: Path) -> None:
    groups: dict[int, list[str]] = {}
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in iter_grouped(catalog):
            writer.writerow(
                (r["group_id"], r["key"], r["url"], r["sha256"], r["kind"], r["distance"], int(r["is_rep"]))
            )
            groups.setdefault(r["group_id"], []).append(r["row"])
    tmp.replace(csv_path)
    # imagededup lists every file, with [] when it has no duplicate. Keyed by manifest key,
    # unless keys repeat among the images: then by row number, or rows would collapse.
    ok = catalog.db.execute("SELECT row, key FROM items WHERE status = 'ok' ORDER BY row").fetchall()
    unique = len({key for _, key in ok}) == len(ok)
    name = {row: (key if unique else str(row)) for row, key in ok}
    # Written as it goes, each name encoded once: a group of N lists N - 1 names N times, so
    # the file is quadratic in a group's size (~400 MB for one of 5,000 copies); a dict of
    # lists and one json.dumps of it held ~1 GB and took ~30 s for that group alone.
    place = {row: (g, k) for g, rows in groups.items() for k, row in enumerate(rows)}  # group, index
    listed: dict[int, tuple[str, list[int]]] = {}  # group -> its names joined, where each starts
    tmp = json_path.with_name(json_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("{")
        for k, (row, _) in enumerate(ok):
            f.write(("" if k == 0 else ", ") + json.dumps(name[row], ensure_ascii=False) + ": [")
            if row in place:
                g, at = place[row]
                if g not in listed:
                    listed[g] = _joined([json.dumps(name[o], ensure_ascii=False) for o in groups[g]])
                joined, starts = listed[g]
                f.write(_without(joined, starts, at))
            f.write("]")
        f.write("}")
    tmp.replace(json_path)


def _joined(encoded: list[str]) -> tuple[str, list[int]]:
    """``", "``.join of ``encoded``, and where each item starts in it (one past the end last)."""
    starts, at = [], 0
    for e in encoded:
        starts.append(at)
        at += len(e) + 2
    return ", ".join(encoded), [*starts, at]


def _without(joined: str, starts: list[int], k: int) -> str:
    """``joined`` (see ``_joined``) without its item ``k`` and that item's separator."""
    count = len(starts) - 1
    if count == 1:
        return ""
    if k == 0:
        return joined[starts[1] :]
    if k == count - 1:
        return joined[: starts[k] - 2]
    return joined[: starts[k]] + joined[starts[k + 1] :]
