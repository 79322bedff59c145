"""The pair rule: the hashes, then the thumbnail check (scored on the pool) for what they let through."""

from __future__ import annotations

from pipeline.config import DedupOptions
from pipeline.dedup.index import popcount
from pipeline.dedup.items import Items
from pipeline.dedup.pool import CheckPool
from pipeline.dedup.thumbcheck import ThumbnailCheck

# A pair whose stored hashes are too far apart for the rule (a copy cropped or turned past
# them) is a duplicate only on a stricter thumbnail match, which the crops and turns of the
# check can reach but a look-alike sibling does not (bench/dedup_quality.py).
GEOMETRY_SIMILARITY = 0.93


def accepts(items: Items, check: ThumbnailCheck | None, options: DedupOptions, a: int, b: int) -> bool:
    dp = int(popcount(items.phash[a : a + 1] ^ items.phash[b : b + 1])[0])
    dd = int(popcount(items.dhash[a : a + 1] ^ items.dhash[b : b + 1])[0])
    within = dp + dd <= options.max_sum
    if check is None:
        return within
    need = options.min_similarity if within else max(options.min_similarity, GEOMETRY_SIMILARITY)
    return check.score(int(items.rows[a]), items.sha[a], int(items.rows[b]), items.sha[b]) >= need


def check_candidates(
    items: Items,
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
