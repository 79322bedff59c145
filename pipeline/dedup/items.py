"""The catalog's side of dedup: its ok rows as arrays, their thumbnails and cached verdicts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.catalog import Catalog
from pipeline.dedup.index import hex_to_u64
from pipeline.dedup.thumbcheck import VERSION
from pipeline.errors import DedupError


@dataclass(slots=True)
class Items:
    """The ok rows of a catalog as arrays, in row order."""

    rows: np.ndarray
    sha: list[str]
    phash: np.ndarray
    dhash: np.ndarray
    pixels: np.ndarray
    size: np.ndarray


_NO_HASH = "0" * 16


def load_items(catalog: Catalog) -> tuple[Items, np.ndarray]:
    """The ok rows, and which of them have perceptual hashes (a ``--no-thumbnails`` run's
    rows have only their SHA-256: exact groups, no near search; their hashes read as 0)."""
    data = catalog.db.execute(
        "SELECT row, sha256, phash, dhash, COALESCE(width * height, 0), COALESCE(bytes, 0) FROM items "
        "WHERE status = 'ok' AND sha256 IS NOT NULL ORDER BY row"
    ).fetchall()
    if not data:
        _raise_nothing(catalog)
    rows, sha, ph, dh, px, size = zip(*data)
    hashed = np.array([p is not None and d is not None for p, d in zip(ph, dh)], bool)
    items = Items(
        rows=np.array(rows, np.int64),
        sha=list(sha),
        phash=hex_to_u64([p if h else _NO_HASH for p, h in zip(ph, hashed.tolist())]),
        dhash=hex_to_u64([d if h else _NO_HASH for d, h in zip(dh, hashed.tolist())]),
        pixels=np.array(px, np.int64),
        size=np.array(size, np.int64),
    )
    return items, hashed


def unhashed_notice(unhashed: int, n: int) -> str | None:
    if not unhashed:
        return None
    if unhashed == n:
        return (
            "near duplicates need thumbnails, which this run did not make (--no-thumbnails): only exact "
            "groups (same SHA-256) were looked for; rerun `pipeline run` without it (--force) for near groups"
        )
    return (
        f"{unhashed:,} of the {n:,} images have no thumbnails (--no-thumbnails): only exact groups for them"
    )


def _raise_nothing(catalog: Catalog) -> None:
    by_status = dict(catalog.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
    total = sum(by_status.values())
    if not total:
        raise DedupError(f"{catalog.path} has no images yet: run `pipeline run` into this folder first")
    counts = ", ".join(f"{n:,} {s}" for s, n in sorted(by_status.items()))
    raise DedupError(
        f"none of the {total:,} rows in {catalog.path} is a processed image ({counts}); "
        "nothing to deduplicate (see `pipeline status`; `pipeline run --retry-failed` fetches failures again)"
    )


def thumb_paths(catalog: Catalog, rows: np.ndarray) -> dict[int, str | None]:
    """Smallest stored thumbnail of each of ``rows`` (relative to OUT)."""
    paths: dict[int, str | None] = {}
    for row in rows.tolist():
        (thumbs,) = catalog.db.execute("SELECT thumbnails FROM items WHERE row = ?", (row,)).fetchone()
        paths[row] = smallest_thumbnail(thumbs)
    return paths


def smallest_thumbnail(thumbs: str | None) -> str | None:
    """The path of the smallest thumbnail in a row's ``thumbnails`` column (the one checked and shown)."""
    listed = json.loads(thumbs) if thumbs else []
    return min(listed, key=_pixels)["path"] if listed else None


def _pixels(thumb: dict[str, Any]) -> int:
    # By pixels, not by "size": a size may be a box ("512x384") beside a longest side (256).
    return int(thumb["width"]) * int(thumb["height"])


def load_verdicts(catalog: Catalog) -> dict[tuple[str, str], float]:
    sql = "SELECT a, b, similarity FROM dedup_pairs WHERE version = ?"
    return {(a, b): s for a, b, s in catalog.db.execute(sql, (VERSION,))}
