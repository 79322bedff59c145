"""Stage 8: exact and near-duplicate groups from the hashes the run already stored.

Nothing is decoded again except the small stored thumbnails (each content's, for its
variant hashes and its candidate pairs). Steps:

1. Load every ``ok`` row's SHA-256, pHash and dHash from the catalog as numpy arrays.
2. **Exact**: rows with the same SHA-256 are one picture; only the earliest row of each
   content ("the content") takes part in the near search.
3. **Candidates**: every pair of contents whose pHashes are within ``max_distance`` bits,
   found by ``pairs_within``: an exact multi-index hashing search, never all pairs; then
   (with the thumbnail check on) every pair where a cropped or turned variant of one
   (``ThumbnailCheck.variant_hashes``, from its thumbnail) is within ``VARIANT_RADIUS`` of
   the other's pHash (``pairs_across``, the same search from the variants' side).
4. **Rule**: a candidate is a duplicate when pHash + dHash distance <= ``max_sum`` and its
   stored thumbnails match: the best of the check's views (whole, crops, turns; see
   ``thumbcheck``) scores >= ``min_similarity`` and, when both are in colour, their chroma
   grids agree. A pair past ``max_sum`` (a crop or turn moves the hashes) needs
   ``GEOMETRY_SIMILARITY``. ``verify=False`` groups on the hashes alone. The hashes alone
   confuse look-alikes (pHash document-like layouts, dHash plain backgrounds); the
   thumbnail check removes what both get wrong (see issue #4).
5. **Groups**: union-find over the accepted pairs, closest first. Two groups merge only if
   their seeds (first members) pass the rule too, so chains A~B~C cannot join two different
   pictures through a middle one: the transitive closure of raw pairs has precision 0.41.
6. One representative per group (``keep``), written with every member to the catalog
   (``dedup_members``) in one transaction. Thumbnail verdicts are cached by content
   (``dedup_pairs``), so a rerun after more rows were added only checks the new pairs.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.catalog import Catalog
from pipeline.config import CSV_NAME, JSON_NAME, DedupOptions
from pipeline.dedup_pool import CheckPool, default_workers
from pipeline.errors import CatalogError, DedupError, StorageError, UsageError
from pipeline.locate import find_run
from pipeline.thumbcheck import _NO_THUMBS as NO_THUMBS
from pipeline.thumbcheck import BAND_COLUMNS, VERSION, ThumbnailCheck, describe, hue_agrees

CSV_COLUMNS = ("group_id", "key", "url", "sha256", "kind", "distance", "is_representative")


@dataclass(frozen=True, slots=True)
class DedupResult:
    images: int  # ok rows considered
    groups: int
    duplicates: int  # members that are not their group's representative
    exact: int  # of those, byte-identical to their representative
    candidates: int  # near candidate pairs from the index (not those found once their ends were one group)
    checked: int  # thumbnail checks run now
    cached: int  # thumbnail checks reused from an earlier dedup
    elapsed_s: float
    written: tuple[Path, Path] = (Path(CSV_NAME), Path(JSON_NAME))  # duplicates.csv, .json
    notice: str | None = None  # why some images were left out of the near search
    held: int = 0  # most candidate pairs held at once: bounded, never all pairs of a cluster


@dataclass(frozen=True, slots=True)
class RunFiles:
    """Where a run's pieces are: ``out`` (a local folder or an fsspec URL: the thumbnails'
    root), its catalog, and where duplicates.csv/.json go."""

    out: Path | str
    catalog: Path
    csv: Path
    json: Path

    @property
    def remote(self) -> bool:
        return isinstance(self.out, str)


def run_files(
    out: str | Path, catalog: str | Path | None = None, output: str | Path | None = None
) -> RunFiles:
    """Find the run: OUT/catalog.sqlite, or ``catalog`` (a run's ``--catalog``). Outputs go to
    ``output``, else OUT, else (OUT is a URL) beside the catalog as ``<catalog stem>.duplicates.*``.

    Raises ``UsageError`` for what cannot be a run, saying what to give instead.
    """
    place = find_run(out, catalog, needs_out=True)  # locate.py: the usage errors of every command
    where, path = place.out, place.catalog
    if output is not None:
        folder, prefix = Path(output), ""
    elif isinstance(where, Path):
        folder, prefix = where, ""
    else:
        folder, prefix = path.parent, f"{path.stem}."
    return RunFiles(
        out=where, catalog=path, csv=folder / f"{prefix}{CSV_NAME}", json=folder / f"{prefix}{JSON_NAME}"
    )


# --- the index -------------------------------------------------------------------------------


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _BYTE_BITS[x.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8)


_BYTE_BITS = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def hex_to_u64(hexes: list[str]) -> np.ndarray:
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=">u8").astype(np.uint64)


Wanted = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (index, index) -> which pairs to keep


def pairs_within(
    hashes: np.ndarray, radius: int, *, chunk: int = 1 << 21
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` with ``popcount(hashes[i] ^ hashes[j]) <= radius``, exactly, and
    its distance: what ``iter_pairs_within`` yields, gathered (it holds every pair: for a
    bounded memory, consume the iterator)."""
    # The loop of iter_pairs_within, not a call to it: with nothing kept between two chunks,
    # glibc hands each chunk's freed temporaries back to the OS and the next chunk faults them
    # in again, which made this 2x slower (250k hashes: 10.1 s against 5.5 s; the same with
    # MALLOC_TRIM_THRESHOLD_ set). The pairs gathered here keep the heap's top in use.
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    empty = np.empty(0, np.int64)
    if len(h) < 2:
        return empty, empty, np.empty(0, np.uint8)
    blocks = _plan_blocks(len(h), radius)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for k, (shift, width, flips) in enumerate(blocks):
        buckets = _Buckets(((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64), width)
        for pattern in _patterns(width, flips):
            queries, own = buckets.queries(pattern.bit_length() - 1 if pattern else None)
            for qi, qj in buckets.join(queries, own ^ pattern, chunk):
                if not pattern:
                    keep = qj > qi
                    qi, qj = qi[keep], qj[keep]
                ok = _new_within(h[qi] ^ h[qj], radius, blocks[:k])
                found_i.append(qi[ok])
                found_j.append(qj[ok])
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    i, j = np.minimum(i, j), np.maximum(i, j)
    return i, j, popcount(h[i] ^ h[j])


def iter_pairs_within(
    hashes: np.ndarray, radius: int, *, chunk: int = 1 << 21, wanted: Wanted | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair ``i < j`` with ``popcount(hashes[i] ^ hashes[j]) <= radius``, exactly once,
    as (i, j) arrays of at most ~``chunk`` pairs each, as they are found.

    Multi-index hashing (Norouzi et al., 2012): split the 64 bits into ``m`` blocks and give
    block ``k`` a radius ``s_k`` with ``sum(s_k + 1) > radius``; by the pigeonhole principle a
    pair within ``radius`` is within ``s_k`` bits in at least one block. For each block and
    each flip pattern of at most ``s_k`` bits, a bucket table joins every hash with the
    hashes whose block equals its block XOR the pattern. A pair is kept only in the first
    block where it qualifies, and for a pattern only from the side whose highest flipped bit
    is 0, so each pair comes out once. ``m`` is chosen by a cost model (3 blocks of 21-22
    bits for 1M hashes at radius 8). Candidates are expanded ``chunk`` at a time, so memory
    stays bounded however many pairs there are (a cluster of N copies has N^2 / 2).
    ``wanted(i, j)``, if given, drops pairs before they are measured (the caller's pairs
    already settled: cheaper than the distance test).
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    if len(h) < 2:
        return
    blocks = _plan_blocks(len(h), radius)
    for k, (shift, width, flips) in enumerate(blocks):
        values = ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        buckets = _Buckets(values, width)
        for pattern in _patterns(width, flips):
            queries, own = buckets.queries(pattern.bit_length() - 1 if pattern else None)
            for qi, qj in buckets.join(queries, own ^ pattern, chunk):
                if not pattern:
                    keep = qj > qi
                    qi, qj = qi[keep], qj[keep]
                if wanted is not None:
                    keep = wanted(qi, qj)
                    qi, qj = qi[keep], qj[keep]
                ok = _new_within(h[qi] ^ h[qj], radius, blocks[:k])
                qi, qj = qi[ok], qj[ok]
                if len(qi):
                    yield np.minimum(qi, qj), np.maximum(qi, qj)


def _new_within(x: np.ndarray, radius: int, earlier: list[tuple[int, int, int]]) -> np.ndarray:
    """Which XORs ``x`` are within ``radius`` and were not found by an ``earlier`` block
    (a pair within radius is found by the first block where it differs in few enough bits)."""
    ok = popcount(x) <= radius
    for shift, width, flips in earlier:
        ok &= popcount((x >> np.uint64(shift)) & np.uint64((1 << width) - 1)) > flips
    return ok


def pairs_across(
    queries: np.ndarray, hashes: np.ndarray, radius: int, *, chunk: int = 1 << 21
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query ``q``, hash ``h``) with ``popcount(queries[q] ^ hashes[h]) <= radius``,
    once, and its distance: ``iter_pairs_across`` gathered."""
    q = np.ascontiguousarray(queries, dtype=np.uint64)
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    found = list(iter_pairs_across(q, h, radius, chunk=chunk))
    if not found:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.uint8)
    qi, hj = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    return qi, hj, popcount(q[qi] ^ h[hj])


def iter_pairs_across(
    queries: np.ndarray, hashes: np.ndarray, radius: int, *, chunk: int = 1 << 21, wanted: Wanted | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every (query ``q``, hash ``h``) with ``popcount(queries[q] ^ hashes[h]) <= radius``,
    once, as (q, h) arrays of at most ~``chunk`` pairs each, as they are found.

    The same multi-index search as ``iter_pairs_within``, with the buckets over ``hashes``
    and every flip pattern probed from the query side; ``wanted(q, h)`` as there.
    """
    q = np.ascontiguousarray(queries, dtype=np.uint64)
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    if not len(q) or not len(h):
        return
    blocks = _plan_blocks(len(h), radius)
    everyone = np.arange(len(q))
    for k, (shift, width, flips) in enumerate(blocks):
        mask = np.uint64((1 << width) - 1)
        buckets = _Buckets(((h >> np.uint64(shift)) & mask).astype(np.int64), width)
        own = ((q >> np.uint64(shift)) & mask).astype(np.int64)
        for pattern in _patterns(width, flips):
            for qi, hj in buckets.join(everyone, own ^ pattern, chunk):
                if wanted is not None:
                    keep = wanted(qi, hj)
                    qi, hj = qi[keep], hj[keep]
                ok = _new_within(q[qi] ^ h[hj], radius, blocks[:k])
                if ok.any():
                    yield qi[ok], hj[ok]


def _plan_blocks(n: int, radius: int) -> list[tuple[int, int, int]]:
    """(shift, width, flips) of each block, for the block count of lowest estimated cost."""
    best: tuple[float, list[tuple[int, int, int]]] | None = None
    for m in range(1, min(radius + 1, 16) + 1):
        widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
        # sum(flips + 1) must exceed the radius; the spare flips go to the widest blocks.
        spare = radius + 1 - m
        flips = [spare // m + (1 if b < spare % m else 0) for b in range(m)]
        cost = 0.0
        for w, s in zip(widths, flips):
            probes = sum(math.comb(w, t) for t in range(s + 1))
            lookup = n * (1 if w <= _DIRECT_BITS else 6)  # a table gather vs a binary search
            cost += probes * (lookup + n * n / 2.0**w + 20_000)  # + numpy call overhead
        if best is None or cost < best[0]:
            shifts = np.cumsum([0, *widths[:-1]])
            best = (cost, [(int(sh), w, s) for sh, w, s in zip(shifts, widths, flips)])
    assert best is not None
    return best[1]


def _patterns(width: int, flips: int) -> Iterator[int]:
    """Every ``width``-bit mask with at most ``flips`` bits set (0 first)."""
    from itertools import combinations

    for t in range(min(flips, width) + 1):
        for bits in combinations(range(width), t):
            yield sum(1 << b for b in bits)


_DIRECT_BITS = 24  # blocks up to this wide get a direct-address table (2^24 int64 = 128 MB)


class _Buckets:
    """Positions of each block value: a direct table for narrow blocks, sorted search else.

    Queries run in value order, so the table lookups of a pattern walk memory nearly in
    sequence (measured ~2x faster at 1M than in row order).
    """

    def __init__(self, values: np.ndarray, width: int) -> None:
        self.order = np.argsort(values, kind="stable")
        self.sorted = values[self.order]
        self.direct = width <= _DIRECT_BITS
        if self.direct:
            self.prefix = np.zeros((1 << width) + 1, np.int64)
            self.prefix[1:] = np.cumsum(np.bincount(values, minlength=1 << width))
        self._halves: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def queries(self, top: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Items whose block has bit ``top`` clear (all items for ``None``), and their blocks."""
        if top is None:
            return self.order, self.sorted
        if top not in self._halves:
            clear = ((self.sorted >> top) & 1) == 0
            self._halves[top] = (self.order[clear], self.sorted[clear])
        return self._halves[top]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.direct:
            lo = self.prefix[keys]
            return lo, self.prefix[keys + 1] - lo
        lo = np.searchsorted(self.sorted, keys, "left")
        return lo, np.searchsorted(self.sorted, keys, "right") - lo

    def join(
        self, queries: np.ndarray, keys: np.ndarray, chunk: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(query, match) index pairs for every match of every key, ~``chunk`` pairs at a time."""
        lo, cnt = self.lookup(keys)
        hit = np.flatnonzero(cnt)
        queries, lo, cnt = queries[hit], lo[hit], cnt[hit]
        ends = np.cumsum(cnt)
        start = 0
        while start < len(queries):
            base = ends[start - 1] if start else 0
            stop = max(int(np.searchsorted(ends, base + chunk, "right")), start + 1)
            c = cnt[start:stop]
            total = int(c.sum())
            qi = np.repeat(queries[start:stop], c)
            first = np.repeat(lo[start:stop] - (np.cumsum(c) - c), c)
            yield qi, self.order[first + np.arange(total)]
            start = stop


# --- grouping --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Items:
    """The ok rows of a catalog as arrays, in row order."""

    rows: np.ndarray
    sha: list[str]
    phash: np.ndarray
    dhash: np.ndarray
    pixels: np.ndarray
    size: np.ndarray


_NO_HASH = "0" * 16


def _load(catalog: Catalog) -> tuple[_Items, np.ndarray]:
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
    items = _Items(
        rows=np.array(rows, np.int64),
        sha=list(sha),
        phash=hex_to_u64([p if h else _NO_HASH for p, h in zip(ph, hashed.tolist())]),
        dhash=hex_to_u64([d if h else _NO_HASH for d, h in zip(dh, hashed.tolist())]),
        pixels=np.array(px, np.int64),
        size=np.array(size, np.int64),
    )
    return items, hashed


def _unhashed_notice(unhashed: int, n: int) -> str | None:
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


# A pair whose stored hashes are too far apart for the rule (a copy cropped or turned past
# them) is a duplicate only on a stricter thumbnail match, which the crops and turns of the
# check can reach but a look-alike sibling does not (bench/dedup_quality.py).
GEOMETRY_SIMILARITY = 0.93
VARIANT_RADIUS = 8  # pHash bits between a cropped/turned variant and a stored pHash


def _accepts(items: _Items, check: ThumbnailCheck | None, options: DedupOptions, a: int, b: int) -> bool:
    dp = int(popcount(items.phash[a : a + 1] ^ items.phash[b : b + 1])[0])
    dd = int(popcount(items.dhash[a : a + 1] ^ items.dhash[b : b + 1])[0])
    within = dp + dd <= options.max_sum
    if check is None:
        return within
    need = options.min_similarity if within else max(options.min_similarity, GEOMETRY_SIMILARITY)
    return check.score(int(items.rows[a]), items.sha[a], int(items.rows[b]), items.sha[b]) >= need


def _search(
    items: _Items, contents: np.ndarray, options: DedupOptions, groups: _Grouper, variants: np.ndarray | None
) -> None:
    """Feed ``groups`` every candidate pair of contents as the search finds them: first the
    pairs within ``max_distance`` in pHash (closest pHash + dHash first), then, with
    ``variants`` (each content's cropped and turned pHashes, from its thumbnail), the pairs
    where a variant of one is within ``VARIANT_RADIUS`` of the other's pHash (closest
    variant first, after every pair the stored hashes found). No list of all pairs is
    made: a chunk's pairs whose ends are already one group are dropped as they come."""
    ph = items.phash[contents]
    root = groups.root  # updated in place as groups join

    def apart(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return root[contents[i]] != root[contents[j]]

    for i, j in iter_pairs_within(ph, options.max_distance, chunk=_CHUNK, wanted=apart):
        a, b = contents[i], contents[j]
        groups.found += len(a)
        groups.feed(a, b, popcount(items.phash[a] ^ items.phash[b]).astype(np.int64)
                    + popcount(items.dhash[a] ^ items.dhash[b]))  # fmt: skip
    groups.flush()
    if variants is None or len(contents) < 2:
        return
    groups.count_new = True  # a pair the stored hashes found is not counted twice
    flat = variants.ravel()
    width = variants.shape[1]

    def owners_apart(q: np.ndarray, h: np.ndarray) -> np.ndarray:
        return root[contents[q // width]] != root[contents[h]]

    for qi, hj in iter_pairs_across(flat, ph, VARIANT_RADIUS, chunk=_CHUNK, wanted=owners_apart):
        owner = qi // width
        mine = owner != hj
        distance = popcount(flat[qi[mine]] ^ ph[hj[mine]]).astype(np.int64)
        groups.feed(contents[owner[mine]], contents[hj[mine]], 1000 + distance)
    # A banner: the band-cut variants of the two copies agree, neither with a whole picture.
    for column in BAND_COLUMNS:
        band = np.ascontiguousarray(variants[:, column])
        for i, j in iter_pairs_within(band, VARIANT_RADIUS, chunk=_CHUNK, wanted=apart):
            groups.feed(contents[i], contents[j], 1000 + popcount(band[i] ^ band[j]).astype(np.int64))
    groups.flush()


def _check_candidates(
    items: _Items,
    window: list[tuple[int, int, int, int]],
    check: ThumbnailCheck,
    pool: CheckPool,
    options: DedupOptions,
) -> None:
    """Score, on the pool, what deciding the ``window`` (x, y, root x, root y) will ask.

    The pair itself and, when the two are not both their groups' seeds, the two seeds, if
    not known yet: every one, as a pair past the hash rule may pass on a stricter match.
    """
    wanted: dict[tuple[str, str], tuple[int, str, int, str]] = {}
    for x, y, rx, ry in window:
        for p, q in ((x, y), (rx, ry)) if {rx, ry} != {x, y} else ((x, y),):
            sp, sq = items.sha[p], items.sha[q]
            key = (sp, sq) if sp < sq else (sq, sp)
            if key in wanted or key in check.known or key in check.new:
                continue
            wanted[key] = (int(items.rows[p]), sp, int(items.rows[q]), sq)
    # Colour grids of the groups' seeds that no batch will read (cached verdicts).
    read = {r for pair in wanted.values() for r in (pair[0], pair[2])} | pool.tints.keys()
    grids = sorted({int(items.rows[r]) for w in window for r in w[2:]} - read)
    if wanted or grids:
        check.new.update(pool.score(list(wanted.values()), grids))
        check.views.update(pool.views)


_ATTEMPTS = 4  # failed joins tried between two groups before they are given up on
_WINDOW = 16384  # candidates looked at per round of checks
_BUFFER = 1 << 22  # candidates held before they are decided (~100 MB with the sort)
_CHUNK = 1 << 20  # candidates the search hands over at a time


class _Grouper:
    """Union-find over the contents, fed candidate pairs in chunks as the search finds them.

    Candidates wait in a buffer, are decided closest first when it holds ``_BUFFER`` or
    when the search moves on (stored hashes, then variants), and a pair whose ends are
    already one group, or that was already decided, is dropped as it comes. So the pairs
    of a cluster of N copies are never all held (N^2 / 2: 12.5M for 5,000): once its first
    buffer is decided it is one group and the rest of its pairs cost a vectorised test.
    While every candidate fits in one buffer, the order is exactly closest first.

    A buffer is decided in windows. A window takes the next candidates whose ends are in
    different groups such that no decision in the window can change a root another one
    uses: one candidate per pair of groups, a group joins at most one bigger group, and a
    group others join joins none (the bigger group keeps its root). The checks they need
    (the pair, and the seeds of their groups) are then all known at once and scored
    together on the pool, and each one is used; the others wait for the next window. Two
    groups that failed ``_ATTEMPTS`` times (or once on their seeds or colours, which do
    not change while they do not) are not tried again. A cluster of N copies costs O(N)
    checks, not O(N^2) (issue 13), and the groups do not depend on how many processes
    score the checks.
    """

    def __init__(
        self, items: _Items, check: ThumbnailCheck | None, options: DedupOptions, pool: CheckPool | None
    ) -> None:
        self.items, self.check, self.options, self.pool = items, check, options, pool
        n = len(items.rows)
        self.n = n
        self.root = np.arange(n)  # current group root of every item
        # The member a group's seed checks use: its largest picture (pixels, then the earliest
        # row), usually the original. The root itself is the first member of the bigger
        # group, often an edited copy, and two copies edited apart (an edge crop, a turn)
        # match through their original, not directly (issue 13: a third of the copies lost
        # at grouping had passed their own check).
        self.seed = np.arange(n)
        self._new_seeds: list[tuple[int, int]] = []  # (root, a joined group's seed), after a window
        self.members: dict[int, list[int]] = {}  # root -> members, for groups of 2+
        self.joined = np.zeros(n, np.int64)
        self.tints: dict[int, np.ndarray | None] = {}  # root -> colour grid of its first colour member
        self.failed: dict[tuple[int, int], int] = {}  # (root, root) -> failed joins
        self.tried: set[int] = set()  # pairs (a * n + b) decided without a join, or given up on
        self._tried = np.empty(0, np.int64)  # the same, sorted, for the vectorised test
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []  # (pair code, order key)
        self._held = 0
        self.found = 0  # candidate pairs from the search (see ``DedupResult.candidates``)
        self.count_new = False  # count pairs at decision time, once each (variant pairs)
        self.peak_held = 0  # most candidates held at once (a test reads it)

    def feed(self, a: np.ndarray, b: np.ndarray, key: np.ndarray) -> None:
        """Candidates ``a``-``b`` (content indices), ordered by ``key`` (smaller first)."""
        a, b = np.minimum(a, b), np.maximum(a, b)
        fresh = self.root[a] != self.root[b]
        code = a[fresh] * self.n + b[fresh]
        code, key = self._untried(code, key[fresh])
        if not len(code):
            return
        self._buffer.append((code, key))
        self._held += len(code)
        self.peak_held = max(self.peak_held, self._held)
        if self._held >= _BUFFER:
            self.flush()

    def _untried(self, code: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self._tried) or not len(code):
            return code, key
        at = np.minimum(np.searchsorted(self._tried, code), len(self._tried) - 1)
        keep = self._tried[at] != code
        return code[keep], key[keep]

    def flush(self) -> None:
        """Decide every held candidate, closest first (each pair at its smallest key)."""
        if not self._buffer:
            return
        code = np.concatenate([c for c, _ in self._buffer])
        key = np.concatenate([k for _, k in self._buffer])
        self._buffer, self._held = [], 0
        order = np.lexsort((code, key))
        code = code[order]
        _, first = np.unique(code, return_index=True)
        code = code[np.sort(first)]  # (key, a, b) order, each pair once
        a, b = code // self.n, code % self.n
        fresh = self.root[a] != self.root[b]
        a, b = a[fresh], b[fresh]
        if self.count_new:
            self.found += len(a)
        self._decide(a, b, popcount(self.items.phash[a] ^ self.items.phash[b]).astype(np.int64))
        self._tried = np.array(sorted(self.tried), np.int64)

    def _decide(self, a: np.ndarray, b: np.ndarray, dist: np.ndarray) -> None:
        items, check, options, pool = self.items, self.check, self.options, self.pool
        root, members, failed = self.root, self.members, self.failed
        total, pos = len(a), 0
        pending = np.empty(0, np.int64)  # positions taken from the candidates, not decided yet
        width = _WINDOW
        while pos < total or len(pending):
            # The next candidates across groups; merges only ever join groups, so a pair
            # found in one group now stays there and is dropped for good.
            while len(pending) < width and pos < total:
                step = np.arange(pos, min(total, pos + max(4 * width, 1 << 16)))
                pos = int(step[-1]) + 1
                pending = np.concatenate([pending, step[root[a[step]] != root[b[step]]]])
            pending = pending[root[a[pending]] != root[b[pending]]]
            window: list[tuple[int, int, int, int, int]] = []  # (position, x, y, root x, root y)
            later: list[int] = []
            seen: set[tuple[int, int]] = set()
            keeps: set[int] = set()  # groups that keep their root in this window, whatever joins them
            joins: set[int] = set()  # groups that may join another one (once per window)
            for t in pending[:width].tolist():
                x, y = int(a[t]), int(b[t])
                rx, ry = int(root[x]), int(root[y])
                key = (rx, ry) if rx < ry else (ry, rx)
                if failed.get(key, 0) >= _ATTEMPTS:
                    self.tried.add(x * self.n + y)
                    continue
                big, small = (rx, ry) if len(members.get(rx, ())) >= len(members.get(ry, ())) else (ry, rx)
                # No decision may change a root another candidate of the window was checked with:
                # a group joins at most one other, and a group that others join joins none.
                if key in seen or small in joins or small in keeps or big in joins:
                    later.append(t)
                    continue
                seen.add(key)
                keeps.add(big)
                joins.add(small)
                window.append((t, x, y, rx, ry))
            if check is not None and pool is not None:
                seeds = [(x, y, int(self.seed[wx]), int(self.seed[wy])) for _, x, y, wx, wy in window]
                _check_candidates(items, seeds, check, pool, options)
            for t, x, y, wx, wy in window:
                if not self._join(x, y, wx, wy, int(dist[t])):
                    self.tried.add(x * self.n + y)
            # Seeds change between windows only, so every check a window uses was scored
            # with it (a group others join keeps its root within a window, not its seed).
            for big, seed in self._new_seeds:
                self.seed[big] = _larger_of(self.items, int(self.seed[big]), seed)
            self._new_seeds.clear()
            pending = np.sort(np.concatenate([np.array(later, np.int64), pending[width:]]))

    def _join(self, x: int, y: int, wx: int, wy: int, dist: int) -> bool:
        """Join the groups of ``x`` and ``y`` if the rule lets them; whether it did."""
        items, check, options, pool = self.items, self.check, self.options, self.pool
        root, members, failed, tints = self.root, self.members, self.failed, self.tints
        rx, ry = int(root[x]), int(root[y])
        assert {rx, ry} == {wx, wy}, "a root changed inside its window"
        key = (rx, ry) if rx < ry else (ry, rx)
        if not _accepts(items, check, options, x, y):
            failed[key] = failed.get(key, 0) + 1
            return False
        # Verify before merging: the two seeds must be duplicates too, or a chain through
        # one shared look-alike would pull two different pictures together.
        sx, sy = int(self.seed[rx]), int(self.seed[ry])
        if {sx, sy} != {x, y} and not _accepts(items, check, options, sx, sy):
            failed[key] = _ATTEMPTS
            return False
        # A grayscale copy matches every colouring of its picture: it may join either, but
        # must not bridge a group of one colour to a group of another.
        tint_x = tints[rx] if rx in tints else _tint(check, pool, items, rx)
        tint_y = tints[ry] if ry in tints else _tint(check, pool, items, ry)
        if tint_x is not None and tint_y is not None and not hue_agrees(tint_x, tint_y):
            failed[key] = _ATTEMPTS
            return False
        # The bigger group keeps its root (its seed); the smaller one is relabelled.
        big, small = (rx, ry) if len(members.get(rx, ())) >= len(members.get(ry, ())) else (ry, rx)
        moved = members.pop(small, [small])
        root[moved] = big
        members.setdefault(big, [big]).extend(moved)
        self._new_seeds.append((big, int(self.seed[small])))
        self.joined[small] = dist
        tints[big] = tint_x if tint_x is not None else tint_y
        tints.pop(small, None)
        return True


def _larger_of(items: _Items, p: int, q: int) -> int:
    """Of two contents, the one with more pixels (the earlier row on a tie)."""
    kp, kq = (-int(items.pixels[p]), int(items.rows[p])), (-int(items.pixels[q]), int(items.rows[q]))
    return p if kp <= kq else q


def _tint(check: ThumbnailCheck | None, pool: CheckPool | None, items: _Items, idx: int) -> np.ndarray | None:
    """The 8x8 RGB grid of a content if it is in colour (``None``: grayscale, or no check)."""
    if check is None:
        return None
    row = int(items.rows[idx])
    if pool is not None and row in pool.tints:
        return pool.tints[row]
    return check.tint(row)


def _representative(items: _Items, members: np.ndarray, keep: str) -> int:
    rows = items.rows[members]
    if keep == "largest":
        best = np.lexsort((rows, -items.pixels[members]))[0]
    elif keep == "smallest-file":
        best = np.lexsort((rows, items.size[members]))[0]
    else:
        best = np.argmin(rows)
    return int(members[best])


def dedup(
    out: str | Path,
    options: DedupOptions | None = None,
    *,
    catalog: str | Path | None = None,
    output: str | Path | None = None,
    workers: int | None = None,
) -> DedupResult:
    """Group the duplicates among the ok rows of the run in ``out``; write catalog + files.

    ``out`` is the run's OUT, a local folder or an fsspec URL (its thumbnails are read from
    there); ``catalog`` its ``--catalog`` if not OUT/catalog.sqlite (required for a URL);
    ``output`` the folder for duplicates.csv/.json (see ``run_files``). Thumbnail checks run
    on ``workers`` processes (default: every CPU this process may use), and so do the
    variant hashes of every thumbnail; the groups are the same for any number. Raises
    ``DedupError`` for a run without images or without the thumbnails to check,
    ``UsageError`` for ``workers`` < 1.
    """
    started = time.perf_counter()
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, not {workers}")
    options = options or DedupOptions()
    files = run_files(out, catalog, output)  # the argument is used up: the name is the open catalog's
    with Catalog(files.catalog) as catalog, contextlib.ExitStack() as scratch:  # noqa: PLR1704
        items, hashed = _load(catalog)
        n = len(items.rows)
        # Exact: each SHA-256's earliest row is its content; the rest join it at distance 0.
        first_of: dict[str, int] = {}
        content = np.empty(n, np.int64)
        for idx, sha in enumerate(items.sha):
            content[idx] = first_of.setdefault(sha, idx)
        contents = np.fromiter(first_of.values(), np.int64, len(first_of))
        contents = contents[hashed[contents]]  # near search: only contents with perceptual hashes
        check = None
        if options.verify:
            # Every content's thumbnail: the candidates' variant hashes are made from them.
            paths = _thumb_paths(catalog, items.rows[contents])
            root = scratch.enter_context(_thumbnail_root(files, paths))
            check = ThumbnailCheck(root, paths, _load_verdicts(catalog))
        thumbs_root = check.out if check is not None else Path(".")
        with (
            _objects_named(files, thumbs_root),
            CheckPool(thumbs_root, check.thumbs if check else {}, workers=workers or default_workers()) as pool,
        ):
            # Variant hashes on every core: one thumbnail read per content (~4 ms each).
            variants = pool.variant_hashes(items.rows[contents].tolist()) if check is not None else None
            groups = _Grouper(items, check, options, pool)
            _search(items, contents, options, groups, variants)
        roots, joined, candidates, held = groups.root, groups.joined, groups.found, groups.peak_held
        group_of = roots[content]
        members = _members(items, group_of, joined, content, options)
        _save(catalog, members, check, options)
        write_outputs(catalog, files.csv, files.json)
    exact = sum(1 for m in members if m[3] == "exact" and m[0] != m[2])
    duplicates = sum(1 for m in members if m[0] != m[2])
    return DedupResult(
        images=n,
        groups=len({m[1] for m in members}),
        duplicates=duplicates,
        exact=exact,
        candidates=candidates,
        checked=len(check.new) if check else 0,
        cached=check.reused if check else 0,
        elapsed_s=time.perf_counter() - started,
        written=(files.csv, files.json),
        notice=_unhashed_notice(int((~hashed).sum()), n),
        held=held,
    )


@contextlib.contextmanager
def _thumbnail_root(files: RunFiles, paths: dict[int, str | None]) -> Iterator[Path]:
    """A local folder under which the thumbnails ``paths`` are: OUT itself, or for an object
    store a temp folder beside the catalog into which each is downloaded once (concurrently),
    removed afterwards. ``DedupError`` naming the object if one is not in the store."""
    if not files.remote:
        yield Path(files.out)
        return
    from pipeline.remote_store import copy_objects

    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{files.catalog.name}.thumbs-", dir=files.catalog.parent))
    except OSError as exc:
        raise StorageError(f"cannot make a folder for the thumbnails beside {files.catalog}: {exc}") from exc
    try:
        missing = copy_objects(str(files.out), [p for p in paths.values() if p], folder)
        if missing:  # named here, as the object it is: the check would only see a local path
            row = next(r for r, p in paths.items() if p == missing[0])
            raise DedupError(
                f"thumbnail {files.out}/{missing[0]} of row {row} is missing from the store "
                f"({len(missing):,} missing); {NO_THUMBS}"
            )
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _objects_named(files: RunFiles, local: Path) -> Iterator[None]:
    """For an object-store OUT, a thumbnail's error names the object (``s3://…/thumbs/…``),
    not the temp copy the check read, which is gone when the error is shown."""
    try:
        yield
    except DedupError as exc:
        if not files.remote:
            raise
        text = str(exc).replace(f"{local}/", f"{files.out}/")
        raise DedupError(re.sub(r"^thumbnail (\S+) of row", rf"thumbnail {files.out}/\1 of row", text)) from exc


def report_thumbnails(files: RunFiles, dest: Path) -> Path:
    """The local folder the report's thumbnails are under: OUT, or for an object store
    ``dest``, into which the grouped rows' thumbnails are downloaded (once, concurrently)."""
    if not files.remote:
        return Path(files.out)
    from pipeline.remote_store import copy_objects

    with Catalog(files.catalog, readonly=True) as catalog:
        rels = [_smallest(r["thumbnails"]) for r in iter_grouped(catalog)]
    copy_objects(str(files.out), [r for r in rels if r], dest)
    return dest


Member = tuple[int, int, int, str, int, int]  # row, group_id, representative, kind, distance, join_distance


def _members(
    items: _Items, group_of: np.ndarray, joined: np.ndarray, content: np.ndarray, options: DedupOptions
) -> list[Member]:
    grouped = np.flatnonzero(np.bincount(group_of, minlength=len(group_of))[group_of] >= 2)
    order = grouped[np.argsort(group_of[grouped], kind="stable")]
    bounds = np.flatnonzero(np.diff(group_of[order])) + 1
    found: list[Member] = []
    for members in np.split(order, bounds) if len(order) else []:
        rep = _representative(items, members, options.keep)
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


def _thumb_paths(catalog: Catalog, rows: np.ndarray) -> dict[int, str | None]:
    """Smallest stored thumbnail of each of ``rows`` (relative to OUT)."""
    paths: dict[int, str | None] = {}
    for row in rows.tolist():
        (thumbs,) = catalog.db.execute("SELECT thumbnails FROM items WHERE row = ?", (row,)).fetchone()
        paths[row] = _smallest(thumbs)
    return paths


def _smallest(thumbs: str | None) -> str | None:
    """The path of the smallest thumbnail in a row's ``thumbnails`` column (the one checked and shown)."""
    listed = json.loads(thumbs) if thumbs else []
    return min(listed, key=_pixels)["path"] if listed else None


def _pixels(thumb: dict[str, Any]) -> int:
    # By pixels, not by "size": a size may be a box ("512x384") beside a longest side (256).
    return int(thumb["width"]) * int(thumb["height"])


def _load_verdicts(catalog: Catalog) -> dict[tuple[str, str], float]:
    sql = "SELECT a, b, similarity FROM dedup_pairs WHERE version = ?"
    return {(a, b): s for a, b, s in catalog.db.execute(sql, (VERSION,))}


def _save(
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


# --- outputs ---------------------------------------------------------------------------------

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

