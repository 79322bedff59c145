"""The thumbnail check's verdicts and CPU time on the pairs a run checked, to compare checkouts.

Rescores every content pair in OUT's ``dedup_pairs`` (a ``bench/dedup_quality.py --keep``
run's ``DIR/out``, or a ``bench/dedup_scale.py`` catalog after its dedup) with the
``pipeline`` on ``PYTHONPATH``, through ``dedup.pool.score_batch`` in the pool's batches, in
this process (CPU seconds, one core). ``--glances`` first makes every row's glance with
``variant_batch`` (as ``dedup`` does, not timed) and hands them to the batches (a checkout
without glances ignores the flag). Writes the verdicts as JSON; ``--compare A.json`` prints
how many differ from another checkout's. Issue 13: the colour gate and glances must give
main's floats, pair by pair.

    PYTHONPATH=/work/main flock /tmp/bench.lock python bench/thumbcheck_same.py /tmp/dq/s1/out main.json
    PYTHONPATH=$PWD flock /tmp/bench.lock python bench/thumbcheck_same.py /tmp/dq/s1/out fast.json \\
        --glances --compare main.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import sqlite3
import time
from pathlib import Path

# ``pipeline`` comes from PYTHONPATH (this tree's or another checkout's, to compare).
from pipeline.dedup import pool


def _catalog(out: Path) -> tuple[dict[int, str], list[tuple[int, str, int, str]]]:
    """row -> smallest thumbnail of each content; the checked pairs as (row, sha, row, sha), sorted."""
    with sqlite3.connect(out / "catalog.sqlite") as db:
        contents: dict[str, tuple[int, str]] = {}
        for row, sha, thumbs in db.execute(
            "SELECT row, sha256, thumbnails FROM items WHERE status = 'ok' ORDER BY row"
        ):
            path = min(json.loads(thumbs), key=lambda t: t["width"] * t["height"])["path"]
            contents.setdefault(sha, (row, path))
        checked = db.execute("SELECT a, b FROM dedup_pairs").fetchall()
    pairs = sorted(
        (contents[a][0], a, contents[b][0], b) for a, b in checked if a in contents and b in contents
    )
    return {row: path for row, path in contents.values()}, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a run's OUT whose dedup_pairs to rescore")
    ap.add_argument("dest", type=Path, help="verdicts JSON to write")
    ap.add_argument("--glances", action="store_true", help="hand the batches the variant pass's glances")
    ap.add_argument("--compare", type=Path, help="another checkout's verdicts JSON")
    args = ap.parse_args()
    thumbs, pairs = _catalog(args.out)
    given: dict = {}
    if args.glances and "given" in inspect.signature(pool.score_batch).parameters:
        rows = sorted({r for p in pairs for r in (p[0], p[2])})
        for k in range(0, len(rows), pool.VARIANT_BATCH):
            part = rows[k : k + pool.VARIANT_BATCH]
            _, raw, grid = pool.variant_batch(args.out, {r: thumbs[r] for r in part}, part)
            given.update({r: (raw[i], grid[i]) for i, r in enumerate(part)})
    started = time.process_time()
    verdicts: dict = {}
    for k in range(0, len(pairs), pool.BATCH):
        batch = pairs[k : k + pool.BATCH]
        rows = {r for p in batch for r in (p[0], p[2])}
        extra = ({r: given[r] for r in rows},) if given else ()
        verdicts.update(pool.score_batch(args.out, {r: thumbs[r] for r in rows}, batch, [], *extra)[0])
    cpu = time.process_time() - started
    found = {f"{a}|{b}": v for (a, b), v in verdicts.items()}
    args.dest.write_text(json.dumps(found))
    print(f"{len(found):,} pairs: {cpu:.1f} CPU s ({1000 * cpu / max(1, len(found)):.2f} ms a pair)")
    if args.compare:
        other = json.loads(args.compare.read_text())
        differ = [k for k in found if k not in other or abs(found[k] - other[k]) > 1e-12]
        print(f"against {args.compare}: {len(differ):,} of {len(found):,} verdicts differ")


if __name__ == "__main__":
    main()
