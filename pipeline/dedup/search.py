"""The candidate search: pHash neighbours, then cropped, turned and band-cut variants, fed to the grouper."""

from __future__ import annotations

import numpy as np

from pipeline.config import DedupOptions
from pipeline.dedup.groups import Grouper
from pipeline.dedup.index import iter_pairs_within, popcount
from pipeline.dedup.items import Items
from pipeline.dedup.pool import pairs_across_slice
from pipeline.dedup.views import BAND_COLUMNS

VARIANT_RADIUS = 8  # pHash bits between a cropped/turned variant and a stored pHash
# Two copies cut the same way are nearly one picture (banner and logo copies of the quality
# sets: 0-4 bits, one logo 8), while a cut of a plain picture has few features left: at 8
# bits the side cuts alone doubled the candidates of the 100k scale catalog.
BAND_RADIUS = 4
CHUNK = 1 << 20  # candidates the search hands over at a time

def search(
    items: Items, contents: np.ndarray, options: DedupOptions, groups: Grouper, variants: np.ndarray | None
) -> None:
    """Feed ``groups`` every candidate pair of contents as the search finds them: first the
    pairs within ``max_distance`` in pHash (closest pHash + dHash first), then, with
    ``variants`` (each content's cropped and turned pHashes, from its thumbnail), the pairs
    where a variant of one is within ``VARIANT_RADIUS`` of the other's pHash (closest
    variant first, after every pair the stored hashes found; that search on the grouper's
    pool). No list of all pairs is made: pairs whose ends are already one group are dropped
    as they come."""
    ph = items.phash[contents]
    root = groups.root  # updated in place as groups join

    def apart(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return root[contents[i]] != root[contents[j]]

    for i, j in iter_pairs_within(ph, options.max_distance, chunk=CHUNK, wanted=apart):
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

    group = root[contents]  # a snapshot: the search drops pairs already in one group with it
    hits = (
        groups.pool.pairs_across(variants, ph, VARIANT_RADIUS, group)
        if groups.pool is not None
        else [pairs_across_slice(variants, ph, VARIANT_RADIUS, group, 0)]
    )
    for qi, hj in hits:
        owner = qi // width
        mine = root[contents[owner]] != root[contents[hj]]  # groups joined since, too
        distance = popcount(flat[qi[mine]] ^ ph[hj[mine]]).astype(np.int64)
        groups.feed(contents[owner[mine]], contents[hj[mine]], 1000 + distance)
    # A banner: the band-cut variants of the two copies agree, neither with a whole picture.
    for column in BAND_COLUMNS:
        band = np.ascontiguousarray(variants[:, column])
        for i, j in iter_pairs_within(band, BAND_RADIUS, chunk=CHUNK, wanted=apart):
            groups.feed(contents[i], contents[j], 1000 + popcount(band[i] ^ band[j]).astype(np.int64))
    groups.flush()
