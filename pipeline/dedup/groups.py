"""Union-find over the contents, fed candidates as they are found and deciding them in windows of checks."""

from __future__ import annotations

import numpy as np

from pipeline.config import DedupOptions
from pipeline.dedup.colours import hue_agrees
from pipeline.dedup.index import popcount
from pipeline.dedup.items import Items
from pipeline.dedup.pool import CheckPool
from pipeline.dedup.rule import accepts, check_candidates
from pipeline.dedup.thumbcheck import ThumbnailCheck

_ATTEMPTS = 4  # failed joins tried between two groups before they are given up on
_WINDOW = 16384  # candidates looked at per round of checks
_BUFFER = 1 << 22  # candidates held before they are decided (~100 MB with the sort)


class Grouper:
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
        self, items: Items, check: ThumbnailCheck | None, options: DedupOptions, pool: CheckPool | None
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
                check_candidates(items, seeds, check, pool, options)
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
        if not accepts(items, check, options, x, y):
            failed[key] = failed.get(key, 0) + 1
            return False
        # Verify before merging: the two seeds must be duplicates too, or a chain through
        # one shared look-alike would pull two different pictures together.
        sx, sy = int(self.seed[rx]), int(self.seed[ry])
        if {sx, sy} != {x, y} and not accepts(items, check, options, sx, sy):
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


def _larger_of(items: Items, p: int, q: int) -> int:
    """Of two contents, the one with more pixels (the earlier row on a tie)."""
    kp, kq = (-int(items.pixels[p]), int(items.rows[p])), (-int(items.pixels[q]), int(items.rows[q]))
    return p if kp <= kq else q


def _tint(check: ThumbnailCheck | None, pool: CheckPool | None, items: Items, idx: int) -> np.ndarray | None:
    """The 8x8 RGB grid of a content if it is in colour (``None``: grayscale, or no check)."""
    if check is None:
        return None
    row = int(items.rows[idx])
    if pool is not None and row in pool.tints:
        return pool.tints[row]
    return check.tint(row)
