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

The modules, in the order the data goes through them: ``files`` (where the run's catalog,
thumbnails and outputs are), ``items`` (the catalog's ok rows as arrays), ``index`` (the
Hamming search), ``thumbcheck`` (the thumbnail check and the variant hashes, on ``views``, ``scores`` and
``colours``) and ``pool``
(both on every core), ``rule`` (the pair rule), ``search`` (candidates fed to) ``groups``
(union-find in windows of checks), ``members`` (groups as catalog rows), ``outputs``
(duplicates.csv/.json), ``report`` (the HTML page); ``run`` ties them together.
"""

from pipeline.dedup.files import RunFiles, report_thumbnails, run_files
from pipeline.dedup.index import (
    hex_to_u64,
    iter_pairs_across,
    iter_pairs_within,
    pairs_across,
    pairs_within,
    popcount,
)
from pipeline.dedup.outputs import CSV_COLUMNS, iter_grouped, write_outputs
from pipeline.dedup.run import DedupResult, dedup

__all__ = [
    "CSV_COLUMNS",
    "DedupResult",
    "RunFiles",
    "dedup",
    "hex_to_u64",
    "iter_grouped",
    "iter_pairs_across",
    "iter_pairs_within",
    "pairs_across",
    "pairs_within",
    "popcount",
    "report_thumbnails",
    "run_files",
    "write_outputs",
]
