"""Dedup's CPU work on every core (issue 13): each content's variant hashes and glance, the
search of those variant hashes among the stored pHashes, and the thumbnail checks.

``dedup`` decides what to check, in order, in the parent; this module only scores the
pairs it is handed (and searches the slices of queries it is handed). A list of pairs is cut into batches of ``BATCH`` pairs, always the
same way whatever the number of processes, and each batch is scored by one
``ThumbnailCheck.score_batch`` (each thumbnail of the batch read at most once, and only
if one of its pairs needs crops or turns: the variant pass keeps every content's glance,
``thumbcheck.Glance``, and hands a batch those of its rows), which also returns the colour
grids of its rows: the parent needs them for group seeds (and has them from the glances
where there are). With one process the batches run in the parent; else on a ``spawn``
pool started on first use (a pool costs ~1 s to start, more than a few hundred checks).
The same batches give the same floats, so the groups do not depend on the process count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.dedup.colours import is_colourful
from pipeline.dedup.index import iter_pairs_across
from pipeline.dedup.thumbcheck import Glance, ThumbnailCheck, glance_stack
from pipeline.dedup.views import SIDE, variant_hash_stack

BATCH = 64  # pairs per batch: ~0.5 s of work (~8 ms a thumbnail), enough batches to share a window
_POOL_FROM = 512  # the pool starts for a window of this many pairs; once up, it takes every window

QUERY_SLICE = 1 << 18  # variant hashes searched per job (~2.5 CPU s at 100k stored hashes)
VARIANT_BATCH = 128  # contents per batch of variant hashes: ~0.5 s of work
_STACK = 16  # thumbnails whose views are made at once (bigger stacks fall out of the CPU cache)

Pair = tuple[int, str, int, str]  # row_a, sha_a, row_b, sha_b
_T = TypeVar("_T")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class CheckPool:
    """Scores of content pairs, computed in fixed batches on ``workers`` processes."""

    def __init__(self, out: Path, thumbs: dict[int, str | None], *, workers: int) -> None:
        self.out = out
        self.thumbs = thumbs
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        self.tints: dict[int, np.ndarray | None] = {}  # row -> 8x8 RGB grid if in colour
        self.views: dict[tuple[str, str], int] = {}  # the view that matched (``describe`` names it)
        # Every content's glance, from the variant pass (``thumbcheck.Glance``): row -> its index.
        self._glanced: dict[int, int] = {}
        self._raw16 = np.empty((0, SIDE * SIDE), np.uint16)
        self._grid8 = np.empty((0, 64, 3), np.uint8)

    def _given(self, rows: set[int]) -> dict[int, Glance]:
        return {r: (self._raw16[i], self._grid8[i]) for r in rows if (i := self._glanced.get(r)) is not None}

    def score(self, pairs: list[Pair], tints: Sequence[int] = ()) -> dict[tuple[str, str], float]:
        """Verdicts of ``pairs``; the colour grids of their rows and of ``tints`` land in ``self.tints``."""
        jobs: list[tuple[Path, dict[int, str | None], list[Pair], list[int], dict[int, Glance]]] = []
        pairs = sorted(pairs)  # a row's pairs side by side: read once in one batch, not in several
        for k in range(0, len(pairs), BATCH):
            batch = pairs[k : k + BATCH]
            rows = {r for p in batch for r in (p[0], p[2])}
            jobs.append((self.out, {r: self.thumbs.get(r) for r in rows}, batch, [], self._given(rows)))
        for r in tints:  # colour grids from the glances where there are
            if (i := self._glanced.get(r)) is not None:
                grid = self._grid8[i].astype(np.float64)
                self.tints[r] = grid if is_colourful(grid) else None
        tints = [r for r in tints if r not in self._glanced]
        for k in range(0, len(tints), 4 * BATCH):
            rows = list(tints[k : k + 4 * BATCH])
            jobs.append((self.out, {r: self.thumbs.get(r) for r in rows}, [], rows, {}))
        found: dict[tuple[str, str], float] = {}
        for verdicts, views, grids in self._map(score_batch, jobs, len(pairs) + len(tints) // 4):
            found.update(verdicts)
            self.views.update(views)
            self.tints.update(grids)
        return found

    def variant_hashes(self, rows: list[int]) -> np.ndarray:
        """``ThumbnailCheck.variant_hashes`` of each of ``rows`` (one row each), on the pool:
        every content's thumbnail is read for them, the bulk of a catalog's reads. Their
        glances are kept for the checks (a pair settled by them decodes nothing)."""
        jobs = [
            (
                self.out,
                {r: self.thumbs.get(r) for r in rows[k : k + VARIANT_BATCH]},
                rows[k : k + VARIANT_BATCH],
            )
            for k in range(0, len(rows), VARIANT_BATCH)
        ]
        found = self._map(variant_batch, jobs, len(rows) // 4)
        if not found:
            return np.empty((0, 0), np.uint64)
        self._glanced = {r: i for i, r in enumerate(rows)}
        self._raw16 = np.concatenate([raw for _, raw, _ in found])
        self._grid8 = np.concatenate([grid for _, _, grid in found])
        return np.vstack([hashes for hashes, _, _ in found])

    def pairs_across(
        self, variants: np.ndarray, hashes: np.ndarray, radius: int, group: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (variant, hash) within ``radius`` bits whose owner (row of ``variants``) and
        hash are in different groups (``group``: a label per hash, whose owners share its
        index), as (index into ``variants.ravel()``, hash) arrays, on every core: a slice of
        owners a job. The variant search of a big catalog is millions of queries (34 a
        content: ~27 CPU s at 100k on crowded pHashes) that would otherwise run in the
        parent while the pool waits; the groups drop a cluster's pairs before they are held
        (5,000 copies of one picture: ~25M)."""
        slices = np.array_split(np.arange(len(variants)), max(1, variants.size // QUERY_SLICE))
        jobs = [(variants[s[0] : s[-1] + 1], hashes, radius, group, int(s[0])) for s in slices if len(s)]
        yield from self._map(pairs_across_slice, jobs, variants.size // 64)

    def _map(self, fn: Callable[..., _T], jobs: list[tuple[Any, ...]], weight: int) -> list[_T]:
        """``fn`` over ``jobs``, in order: in the parent for one process, a single job or too
        little work (``weight``, in pair checks) to start the pool for; else on the pool."""
        if self.workers == 1 or len(jobs) < 2 or (self._pool is None and weight < _POOL_FROM):
            with threadpool_limits(1):  # as in the workers: the same cost on a busy machine
                return [fn(*job) for job in jobs]
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_one_blas_thread)
        return list(self._pool.map(fn, *zip(*jobs)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_blas_thread() -> None:
    """Each worker's BLAS on one thread: the pool is already one process per core, and the
    BLAS products of the variant pass (``views.box_phashes``) are small."""
    threadpool_limits(1)


def variant_batch(
    out: Path, thumbs: dict[int, str | None], rows: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The variant pHashes of ``rows`` (in a worker or the parent), one row each: the same
    values as ``ThumbnailCheck.variant_hashes``, computed for the whole batch at once; and
    their glances (``thumbcheck.glance_stack``: whole views, colour grids), from the same read."""
    check = ThumbnailCheck(out, thumbs, {})
    hashes, raws, grids = [], [], []
    for k in range(0, len(rows), _STACK):
        read = [check._pixels(r) for r in rows[k : k + _STACK]]  # its errors name the thumbnail and row
        gray = np.stack([g for g, _, _ in read])
        hashes.append(variant_hash_stack(gray, np.array([a for _, _, a in read])))
        raw, grid = glance_stack(gray, np.stack([c for _, c, _ in read]))
        raws.append(raw)
        grids.append(grid)
    return np.vstack(hashes), np.concatenate(raws), np.concatenate(grids)


def score_batch(
    out: Path,
    thumbs: dict[int, str | None],
    pairs: list[Pair],
    rows: list[int],
    given: dict[int, Glance] | None = None,
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int], dict[int, np.ndarray | None]]:
    """One batch (in a worker or the parent): verdicts keyed as ``ThumbnailCheck.new``, the
    view each matched by (the catalog keeps what was found), and the colour grid of every
    row it read (``dedup`` needs those of group seeds). ``given``: glances already made, so
    only the thumbnails of pairs that need crops or turns are decoded."""
    check = ThumbnailCheck(out, thumbs, {}, given=given)
    if pairs:
        rows_a, shas_a, rows_b, shas_b = (list(c) for c in zip(*pairs))
        check.score_batch(rows_a, shas_a, rows_b, shas_b)
    return check.new, check.views, {r: check.tint(r) for r in thumbs}


def pairs_across_slice(
    variants: np.ndarray, hashes: np.ndarray, radius: int, group: np.ndarray, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """``CheckPool.pairs_across`` for the owners ``first`` onwards of ``variants`` (in a worker
    or the parent), as indexes into the whole ``variants.ravel()``."""
    width = variants.shape[1]

    def apart(q: np.ndarray, h: np.ndarray) -> np.ndarray:
        return group[first + q // width] != group[h]

    found = list(iter_pairs_across(variants.ravel(), hashes, radius, wanted=apart))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([q for q, _ in found]) + first * width, np.concatenate([h for _, h in found])
