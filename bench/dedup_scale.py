"""Scale of the exact Hamming-radius search: 100k -> 1M random 64-bit hashes.

A tenth of the hashes are planted near copies (1..radius bits flipped) of another, so the
search has real pairs to find. Prints time, peak memory (the child's max RSS) and the cost
per image at each size; the per-image cost should stay roughly flat. Each size runs in a
fresh child process so that peak memory is its own. A numpy brute force over the first
20,000 hashes, measured in the same run, is the baseline (all-pairs grows as N^2).

    /tmp/probe/bin/python bench/dedup_scale.py [--radius 8]   # writes bench/results/dedup_scale_r8.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.dedup import pairs_within, popcount


def planted(n: int, radius: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    k = n // 10
    src, dst = rng.integers(0, n, k), rng.integers(0, n, k)
    flips = np.zeros(k, np.uint64)
    for _ in range(radius):  # up to `radius` random bits (repeats cancel: fewer flips)
        flips ^= np.uint64(1) << rng.integers(0, 64, k, dtype=np.uint64)
    h[dst] = h[src] ^ flips
    return h


def one(n: int, radius: int) -> dict:
    h = planted(n, radius)
    started = time.perf_counter()
    i, _, _ = pairs_within(h, radius)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n,
        "pairs": len(i),
        "seconds": round(elapsed, 2),
        "peak_mb": round(peak),
        "us_per_image": round(elapsed / n * 1e6, 2),
    }


def end_to_end(n: int, radius: int) -> dict:
    """``dedup(--no-verify)`` on a real catalog of ``n`` ok rows with these hashes (no thumbnails)."""
    import sqlite3
    import tempfile

    from pipeline.catalog import CATALOG_NAME, ITEM_COLUMNS, Catalog
    from pipeline.dedup import DedupOptions, dedup

    out = Path(tempfile.mkdtemp(prefix="dedup-scale-"))
    ph, dh = planted(n, radius, seed=1), planted(n, radius, seed=2)
    Catalog(out / CATALOG_NAME).close()
    db = sqlite3.connect(out / CATALOG_NAME)
    cols = ("row", "shard_id", "key", "url", "status", "attempts", "redirects", "sha256", "phash", "dhash",
            "width", "height", "format", "bytes", "updated_at")  # fmt: skip
    assert set(cols) <= set(ITEM_COLUMNS)
    db.executemany(
        f"INSERT INTO items ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        ((r, 0, f"k{r}", f"u{r}", "ok", 1, 0, f"{r:064x}", f"{int(ph[r]):016x}", f"{int(dh[r]):016x}", 64, 64,
          "JPEG", 1000, 0.0) for r in range(n)),
    )  # fmt: skip
    db.commit()
    db.close()
    started = time.perf_counter()
    result = dedup(out, DedupOptions(max_distance=radius, verify=False))
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(out)
    return {"n": n, "groups": result.groups, "candidates": result.candidates, "seconds": round(elapsed, 2),
            "peak_mb": round(peak)}  # fmt: skip


def brute(n: int, radius: int) -> dict:
    h = planted(n, radius)
    started = time.perf_counter()
    found = 0
    for a in range(n - 1):
        found += int((popcount(h[a + 1 :] ^ h[a]) <= radius).sum())
    elapsed = time.perf_counter() - started
    return {"n": n, "pairs": found, "seconds": round(elapsed, 2), "us_per_image": round(elapsed / n * 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,250000,500000,1000000")
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--end-to-end", type=int, metavar="N", help="time `dedup --no-verify` on a catalog of N rows")
    args = ap.parse_args()
    if args.end_to_end:
        print(json.dumps(end_to_end(args.end_to_end, args.radius)))
        return
    if args.child:
        print(json.dumps(one(args.child, args.radius)))
        return
    base = brute(20_000, args.radius)
    print(
        f"baseline numpy brute force, 20,000 hashes: {base['seconds']} s ({base['us_per_image']} us/image, grows with N)"
    )
    print(
        f"{'hashes':>10} {'pairs':>9} {'seconds':>8} {'peak MB':>8} {'us/image':>9} {'brute force (N^2 from 20k)':>27}"
    )
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--radius", str(args.radius)],
                              capture_output=True, text=True, check=True, timeout=900)  # fmt: skip
        r = json.loads(proc.stdout)
        r["brute_seconds_extrapolated"] = round(base["seconds"] * (n / base["n"]) ** 2, 1)
        rows.append(r)
        speedup = r["brute_seconds_extrapolated"] / r["seconds"]
        print(
            f"{n:>10,} {r['pairs']:>9,} {r['seconds']:>8.2f} {r['peak_mb']:>8,} {r['us_per_image']:>9.2f} "
            f"{r['brute_seconds_extrapolated']:>17,.0f} s ({speedup:,.0f}x)"
        )
    dest = ROOT / "bench" / "results" / f"dedup_scale_r{args.radius}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"radius": args.radius, "baseline_brute_20k": base, "rows": rows}, indent=2))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
