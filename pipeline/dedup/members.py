"""Groups as rows: each member with its representative, kind and distance, saved to the catalog."""

from __future__ import annotations

import sqlite3
import time

import numpy as np

from pipeline.catalog import Catalog
from pipeline.config import DedupOptions
from pipeline.dedup.index import popcount
from pipeline.dedup.items import Items
from pipeline.dedup.thumbcheck import VERSION, ThumbnailCheck, describe
from pipeline.errors import CatalogError

Member = tuple[int, int, int, str, int, int]  # row, group_id, representative, kind, distance, join_distance


def members_of(
    items: Items, group_of: np.ndarray, joined: np.ndarray, content: np.ndarray, options: DedupOptions
) -> list[Member]:
    grouped = np.flatnonzero(np.bincount(group_of, minlength=len(group_of))[group_of] >= 2)
    order = grouped[np.argsort(group_of[grouped], kind="stable")]
    bounds = np.flatnonzero(np.diff(group_of[order])) + 1
    found: list[Member] = []
    for members in np.split(order, bounds) if len(order) else []:
        rep = representative(items, members, options.keep)
        rep_row = int(items.rows[rep])
        for m in members:
            same = items.sha[m] == items.sha[rep]
            distance = 0 if same else int(popcount(items.phash[m : m + 1] ^ items.phash[rep : rep + 1])[0])
            found.append(
                (
                    int(items.rows[m]),
                    rep_row,
                    rep_row,
                    "exact" if same else "near",
                    distance,
                    int(joined[content[m]]),
                )
            )
    return found


def representative(items: Items, members: np.ndarray, keep: str) -> int:
    rows = items.rows[members]
    if keep == "largest":
        best = np.lexsort((rows, -items.pixels[members]))[0]
    elif keep == "smallest-file":
        best = np.lexsort((rows, items.size[members]))[0]
    else:
        best = np.argmin(rows)
    return int(members[best])


def save(
    catalog: Catalog, members: list[Member], check: ThumbnailCheck | None, options: DedupOptions
) -> None:
    try:
        with catalog.transaction() as db:
            db.execute("DELETE FROM dedup_members")
            db.executemany("INSERT INTO dedup_members VALUES (?, ?, ?, ?, ?, ?)", members)
            if check is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO dedup_pairs (a, b, version, similarity, path, found) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (a, b, VERSION, s, *describe(check.views.get((a, b), 0)))
                        for (a, b), s in check.new.items()
                    ],
                )
            catalog._set_meta(
                "dedup",
                {"max_distance": options.max_distance, "keep": options.keep, "verify": options.verify,
                 "max_sum": options.max_sum, "min_similarity": options.min_similarity, "at": time.time()},
            )  # fmt: skip
    except sqlite3.OperationalError as exc:
        raise CatalogError(f"cannot write the catalog {catalog.path}: {exc}") from exc
