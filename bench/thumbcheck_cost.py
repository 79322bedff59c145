"""CPU milliseconds per thumbnail of dedup's thumbnail check, by part (issue 13).

On the thumbnails of a kept ``bench/dedup_quality.py`` run (``--keep DIR``): the parts
of ``pipeline.dedup.thumbcheck`` one thumbnail costs (decode, whole view, every view, variant
hashes), each timed over the same thumbnails, and ``score_batch`` over the pairs the
kept run checked (its ``dedup_pairs``, as the catalog has them: true and false
candidates), in batches of ``dedup_pool.BATCH`` as the pool cuts them. CPU time of this
process (one core), medians of ``--reps`` repetitions.

    PYTHONPATH=$PWD flock /tmp/bench.lock python bench/thumbcheck_cost.py /tmp/dq/s1
    PYTHONPATH=/tmp/tree-before python bench/thumbcheck_cost.py /tmp/dq/s1   # another checkout's check
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# ``pipeline`` comes from PYTHONPATH (this tree's or another checkout's, to compare).
from pipeline.dedup import thumbcheck
from pipeline.dedup.pool import BATCH
from pipeline.dedup.thumbcheck import ThumbnailCheck


def _catalog(out: Path) -> tuple[dict[str, tuple[int, str]], list[tuple[str, str]]]:
    """sha -> (row, thumbnail path) of each content; the content pairs the run checked."""
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT row, sha256, thumbnails FROM items WHERE status = 'ok' ORDER BY row")
        contents: dict[str, tuple[int, str]] = {}
        for row, sha, thumbs in rows:
            path = min(json.loads(thumbs), key=lambda t: t["width"] * t["height"])["path"]
            contents.setdefault(sha, (row, path))
        pairs = db.execute("SELECT a, b FROM dedup_pairs").fetchall()
    return contents, [(a, b) for a, b in pairs if a in contents and b in contents]


def _cpu_ms(fn: Callable[[], object], n: int, reps: int) -> float:
    """Median over ``reps`` of the CPU ms of ``fn()``, per one of ``n``."""
    times = []
    for _ in range(reps):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return 1000 * statistics.median(times) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="a --keep folder of bench/dedup_quality.py")
    ap.add_argument("--thumbs", type=int, default=300, help="thumbnails timed per part")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=1280, help="checked pairs scored (the run's first, by row)")
    args = ap.parse_args()
    out = args.work / "out"
    contents, pairs = _catalog(out)
    thumbs = {row: path for row, path in contents.values()}
    sample = sorted(thumbs)[: args.thumbs]
    n = len(sample)

    def fresh() -> ThumbnailCheck:
        return ThumbnailCheck(out, thumbs, {})

    parts: dict[str, float] = {}
    check = fresh()
    parts["decode (thumbnail_view)"] = _cpu_ms(lambda: [check._pixels(r) for r in sample], n, args.reps)
    pixels = {r: check._pixels(r) for r in sample}
    check._pixels = pixels.__getitem__  # type: ignore[method-assign]  # the parts below without decode

    def signatures() -> None:
        check.signatures.clear()
        for r in sample:
            check.signature(r)

    parts["signature (whole view, colour grid)"] = _cpu_ms(signatures, n, args.reps)
    if hasattr(check, "_crops"):  # version 5: every view of a thumbnail at once
        parts["every view (crops and turns)"] = _cpu_ms(
            lambda: [check._crops(r) for r in sample], n, args.reps
        )
    parts["variant hashes"] = _cpu_ms(lambda: [check.variant_hashes(r) for r in sample], n, args.reps)

    settled: list[int] = []  # pairs the whole view settled (version 6's lazy search), last repetition

    def batches() -> int:
        read = 0
        settled.clear()
        ordered = sorted((contents[a][0], a, contents[b][0], b) for a, b in pairs)[: args.pairs]
        for k in range(0, len(ordered), BATCH):
            batch = ordered[k : k + BATCH]
            one = fresh()
            one.score_batch(*(list(c) for c in zip(*batch)))
            read += len(one.signatures)
            stop = getattr(thumbcheck, "STOP", 2.0)
            settled.extend(1 for k, v in one.views.items() if v == 0 and one.new[k] >= stop)
        return read

    read = batches()
    per_thumb = _cpu_ms(batches, read, args.reps)
    scored = min(len(pairs), args.pairs)
    print(
        f"thumbcheck VERSION {thumbcheck.VERSION}; {n} thumbnails from {out}; CPU ms, median of {args.reps}"
    )
    for name, ms in parts.items():
        print(f"  {name:<40}{ms:>8.2f} ms a thumbnail")
    print(f"  score_batch over {scored:,} of the run's {len(pairs):,} checked pairs ({read:,} thumbnail reads in "
          f"batches of {BATCH}):{per_thumb:>7.2f} ms a read, {per_thumb * read / max(1, scored):.2f} ms a pair; "
          f"{len(settled):,} pairs settled by the whole view")  # fmt: skip


if __name__ == "__main__":
    main()
