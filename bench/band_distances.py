"""Band-cut pHash distances of banner and logo copies to their originals, on a kept ``bench/dedup_quality.py`` set.

Why ``BAND_RADIUS`` can be small (issue 13):

    PYTHONPATH=$PWD python bench/band_distances.py /tmp/lq-s1
"""

import json
import sys
from pathlib import Path

from pipeline.catalog import Catalog
from pipeline.dedup.items import load_items, thumb_paths
from pipeline.dedup.thumbcheck import ThumbnailCheck
from pipeline.dedup.views import BAND_COLUMNS

root = Path(sys.argv[1])
labels = json.loads((root / "labels.json").read_text())
with Catalog(root / "out" / "catalog.sqlite") as cat:
    items, _ = load_items(cat)
    keys = dict(cat.db.execute("select row, key from items").fetchall())
    rows = [int(r) for r in items.rows]
    paths = thumb_paths(cat, items.rows)
    check = ThumbnailCheck(root / "out", paths, {})
    byname = {keys[r]: r for r in rows}
    orig = {v["base"]: n for n, v in labels.items() if v["role"] == "original"}
    for t in ("wm_banner", "wm_banner+resize50", "wm_logo"):
        d = []
        for n, v in labels.items():
            if v["transform"] == t and n in byname and orig[v["base"]] in byname:
                a, b = check.variant_hashes(byname[n]), check.variant_hashes(byname[orig[v["base"]]])
                d.append(min((int(a[c]) ^ int(b[c])).bit_count() for c in BAND_COLUMNS))
        print(t, sorted(d))
