"""A Hamming-distance index over 64-bit hashes: every pair within a radius, by exact multi-index hashing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np


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
