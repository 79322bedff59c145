"""The thumbnail check alone, on a kept ``bench/dedup_quality.py`` set (issue 13).

Rescores, in this process and with this tree's ``pipeline.dedup.thumbcheck``, every
original-to-copy pair, every pair of a base's picture with its hard negative, and every
cross-picture pair the kept run checked (its ``dedup_pairs``), and says per transform how
many pass the rule's threshold (``min_similarity``, or ``GEOMETRY_SIMILARITY`` for a pair
past ``max_sum``), how many negatives and how many false candidates would pass, and the
CPU the check took per thumbnail. A verifier change is judged here in ~1 minute, before
the full bench (which also runs the candidate search and the grouping):

    python bench/dedup_quality.py --bases 150 --seed 1 --keep /tmp/dq/s1 ...   # once
    PYTHONPATH=$PWD python bench/dedup_verify_scores.py /tmp/dq/s1
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.config import DedupOptions
from pipeline.dedup.rule import GEOMETRY_SIMILARITY
from pipeline.dedup.thumbcheck import ThumbnailCheck, describe

Row = tuple[int, str, int, int, str]  # row, sha, phash, dhash, thumbnail


def _catalog(out: Path) -> tuple[dict[str, Row], list[tuple[str, str]]]:
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT key, row, sha256, phash, dhash, thumbnails FROM items WHERE status = 'ok'")
        items = {
            k: (
                r,
                sha,
                int(p, 16),
                int(d, 16),
                min(json.loads(t), key=lambda x: x["width"] * x["height"])["path"],
            )
            for k, r, sha, p, d, t in rows
        }
        checked = db.execute("SELECT a, b FROM dedup_pairs").fetchall()
    return items, checked


def _pairs(
    labels: dict, items: dict[str, Row], checked: list[tuple[str, str]]
) -> dict[str, list[tuple[str, str]]]:
    """Pairs of file names by what they are: a transform, ``neg:<kind>``, or ``false``."""
    orig = {v["base"]: n for n, v in labels.items() if v["role"] == "original"}
    by_group: dict[str, list[str]] = defaultdict(list)
    for n, v in labels.items():
        by_group[v["group"]].append(n)
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for n, v in labels.items():
        if v["role"] in ("copy", "exact"):
            out[v["transform"]].append((orig[v["base"]], n))
        if v["role"] == "negative":
            out[f"neg:{v['transform']}"] += [
                (a, b) for a in by_group[v["base"]] for b in by_group[v["group"]]
            ]
    first_of_sha = {}
    for n in sorted(items):
        first_of_sha.setdefault(items[n][1], n)
    for a, b in checked:
        na, nb = first_of_sha.get(a), first_of_sha.get(b)
        if na and nb and labels[na]["group"] != labels[nb]["group"]:
            out["false"].append((na, nb))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="a --keep folder of bench/dedup_quality.py")
    ap.add_argument("--json", type=Path, help="write every pair's score here")
    args = ap.parse_args()
    labels = json.loads((args.work / "labels.json").read_text())
    items, checked = _catalog(args.work / "out")
    groups = _pairs(labels, items, checked)
    opts = DedupOptions()
    flat = sorted({p for ps in groups.values() for p in ps if items[p[0]][1] != items[p[1]][1]})
    thumbs = {items[n][0]: items[n][4] for p in flat for n in p}
    check = ThumbnailCheck(args.work / "out", thumbs, {})
    cpu = time.process_time()
    check.score_batch(
        [items[a][0] for a, _ in flat], [items[a][1] for a, _ in flat],
        [items[b][0] for _, b in flat], [items[b][1] for _, b in flat],
    )  # fmt: skip
    cpu = time.process_time() - cpu
    print(f"{len(flat):,} pairs, {len(thumbs):,} thumbnails: {cpu:.1f} CPU s, "
          f"{1000 * cpu / len(thumbs):.2f} ms a thumbnail, {1000 * cpu / len(flat):.2f} ms a pair")  # fmt: skip

    def verdict(a: str, b: str) -> tuple[float, float, int]:
        ra, rb = items[a], items[b]
        if ra[1] == rb[1]:
            return 1.0, 0.0, 0
        key = (min(ra[1], rb[1]), max(ra[1], rb[1]))
        within = (ra[2] ^ rb[2]).bit_count() + (ra[3] ^ rb[3]).bit_count() <= opts.max_sum
        need = opts.min_similarity if within else max(opts.min_similarity, GEOMETRY_SIMILARITY)
        return check.new[key], need, check.views[key]

    print(f"\n{'pairs':<28}{'n':>6}{'pass':>7}{'p10':>7}{'median':>8}  views of the passes")
    dump = {}
    for name in sorted(groups, key=lambda g: (g.startswith(("neg:", "false")), g)):
        got = [verdict(a, b) for a, b in groups[name]]
        dump[name] = [[a, b, round(s, 4), v] for (a, b), (s, _, v) in zip(groups[name], got)]
        scores = np.array([s for s, _, _ in got])
        ok = [s >= need for s, need, _ in got]
        paths = defaultdict(int)
        for (s, need, v), good in zip(got, ok):
            if good:
                paths[describe(v)[0] if v else "whole"] += 1
        if name.startswith("neg:"):
            bases = defaultdict(bool)
            for (a, _), good in zip(groups[name], ok):
                bases[labels[a]["base"]] |= good
            share = f"{sum(bases.values())}/{len(bases)}"
        else:
            share = f"{np.mean(ok):.2f}"
        print(f"{name:<28}{len(got):>6}{share:>7}{np.percentile(scores, 10):>7.3f}{np.median(scores):>8.3f}  "
              + " ".join(f"{k}:{n}" for k, n in sorted(paths.items())))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(dump))


if __name__ == "__main__":
    main()
