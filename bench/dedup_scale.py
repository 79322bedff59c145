"""Scale of the exact Hamming-radius search: 100k -> 1M random 64-bit hashes.

A tenth of the hashes are planted near copies (1..radius bits flipped) of another, so the
search has real pairs to find. Prints time, peak memory (the child's max RSS) and the cost
per image at each size; the per-image cost should stay roughly flat. Each size runs in a
fresh child process so that peak memory is its own. A numpy brute force over the first
20,000 hashes, measured in the same run, is the baseline (all-pairs grows as N^2).

    /tmp/probe/bin/python bench/dedup_scale.py [--radius 8]   # writes bench/results/dedup_scale_r8.json

End to end on a real catalog with real thumbnails (issue 13): ``--catalog 10000,30000,100000``
generates, once, 100,000 small JPEG thumbnails (64-96 px: random smooth pictures, a fifth of
them in near-duplicate groups of 2-6 resized/recompressed/brightened/noised/cropped
copies), records them through ``Catalog.write_rows`` as a run would (pHash/dHash by
``pipeline.image.hashes``), then times ``pipeline dedup OUT`` (the CLI, in a child: wall, CPU,
peak RSS of its process tree) on the first 10k/30k/100k rows, and with ``--cluster 5000``
the 100k catalog where every 20th row is instead one of 5,000 near copies of one picture.

    python -m bench.dedup_scale --catalog 10000,30000,100000 --cluster 5000   # bench/results/dedup_e2e-*.json
    python -m bench.dedup_scale --catalog 10000 --cluster 5000 --only-cluster   # the cluster in the 10k catalog
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.dedup import pairs_within, popcount

BLOCK = 1000  # rows are generated in self-contained blocks: any prefix has a fifth in groups


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


# --- a real catalog with real thumbnails (issue 13) ---------------------------------------------


def _smooth(rng: np.random.Generator, side: int) -> Image.Image:
    grid = rng.integers(0, 256, (rng.integers(4, 8), rng.integers(4, 8), 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize((side, side), Image.Resampling.BICUBIC)


def _variant(base: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = base
    if rng.random() < 0.3:  # crop 3% off one corner
        w, h = im.size
        c = round(0.03 * w)
        im = im.crop((c, c, w, h) if rng.random() < 0.5 else (0, 0, w - c, h - c))
    side = int(rng.integers(56, 97))
    im = im.resize((side, side), Image.Resampling.LANCZOS)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.9, 1.1)))
    noisy = np.asarray(im, np.float64) + rng.normal(0, 3, (side, side, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _block_images(block: int) -> list:
    """The 1,000 pictures of one block: 800 unique, 200 in groups of 2-6, shuffled."""
    rng = np.random.default_rng([7, block])
    images = [_smooth(rng, int(rng.integers(64, 97))) for _ in range(BLOCK * 4 // 5)]
    while len(images) < BLOCK:
        base = _smooth(rng, 128)
        images += [_variant(base, rng) for _ in range(min(int(rng.integers(2, 7)), BLOCK - len(images)))]
    return [images[k] for k in rng.permutation(BLOCK)]


def _cluster_images(count: int) -> list:
    rng = np.random.default_rng([11, count])
    base = _smooth(rng, 128)
    return [_variant(base, rng) for _ in range(count)]


def _record(out: Path, images: list, quality_seed: int) -> list:
    """Write each picture as a content-addressed JPEG under OUT/thumbs; its ImageInfo."""
    from io import BytesIO

    from pipeline.image.hashes import dhash, phash
    from pipeline.models import ImageInfo, Thumbnail

    rng = np.random.default_rng(quality_seed)
    infos = []
    for im in images:
        buf = BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(60, 91)))
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        rel = f"thumbs/96-q85/{sha[:2]}/{sha}.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        w, h = im.size
        infos.append(ImageInfo(sha256=sha, bytes=len(data), format="JPEG", mode="RGB", width=w, height=h,
                               n_frames=1, dhash=dhash(im), phash=phash(im),
                               thumbnails=(Thumbnail(96, w, h, rel),), original_path=None, elapsed_ms=0.0))  # fmt: skip
    return infos


def build(work: Path, n: int, *, cluster: int = 0) -> Path:
    """OUT folder (cached under ``work``) with a catalog of ``n`` ok rows and their thumbnails."""
    from pipeline.catalog import CATALOG_NAME, Catalog
    from pipeline.models import ItemResult, Status

    out = work / (f"out-{n}" + (f"-cluster{cluster}" if cluster else ""))
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    thumbs = work / "thumbs"  # shared by every size: a smaller catalog is a prefix of a bigger one
    thumbs.mkdir(exist_ok=True)
    (out / "thumbs").symlink_to(thumbs)
    every = n // cluster if cluster else 0
    extra = iter(_record(out, _cluster_images(cluster), 13)) if cluster else iter(())
    with Catalog(out / CATALOG_NAME) as catalog:
        for block in range(0, n, BLOCK):
            cache = work / f"block-{block // BLOCK}.json"
            if cache.exists():
                infos = _load_infos(cache)
            else:
                infos = _record(out, _block_images(block // BLOCK), block)
                _save_infos(cache, infos)
            rows = []
            for k, info in enumerate(infos[: n - block]):
                row = block + k
                if every and row % every == every // 2:
                    info = next(extra)
                rows.append((row // 500, ItemResult(row=row, key=f"img/{row}.jpg", url=f"img/{row}.jpg",
                                                   status=Status.OK, attempts=1, image=info)))  # fmt: skip
            catalog.write_rows(rows)
    (out / "done").touch()
    return out


def _save_infos(path: Path, infos: list) -> None:
    from dataclasses import asdict

    path.write_text(json.dumps([asdict(i) for i in infos]))


def _load_infos(path: Path) -> list:
    from pipeline.models import ImageInfo, Thumbnail

    return [ImageInfo(**{**d, "thumbnails": tuple(Thumbnail(**t) for t in d["thumbnails"])})
            for d in json.loads(path.read_text())]  # fmt: skip


def run_dedup(out: Path, *, pythonpath: Path = ROOT, timeout: float = 3600) -> dict:
    """``pipeline dedup OUT`` through the CLI in a child; wall, CPU, peak RSS of its tree."""
    import os

    from bench.measure import run_measured

    for f in ("dedup_members", "dedup_pairs"):  # every run starts cold: no cached verdicts
        import sqlite3

        with sqlite3.connect(out / "catalog.sqlite") as db:
            db.execute(f"DELETE FROM {f}")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    m = run_measured([sys.executable, "-c", "from cli import main; main()", "dedup", str(out)],
                     env=env, cwd=pythonpath, timeout=timeout)  # fmt: skip
    if m.returncode != 0:
        raise RuntimeError(f"dedup failed ({m.returncode}): {m.stderr[-2000:]}")
    return {"summary": m.stdout.splitlines()[0], "wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1),
            "peak_rss_mb": round(m.peak_rss_mb)}  # fmt: skip


def catalogs(
    sizes: list[int], cluster: int, work: Path, pythonpath: Path, *, only_cluster: bool = False
) -> list[dict]:
    print(f"{'images':>8} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'ms/image':>9}  summary")
    rows = []
    cases = ([] if only_cluster else [(n, 0) for n in sizes]) + ([(max(sizes), cluster)] if cluster else [])
    for n, c in cases:
        out = build(work, n, cluster=c)
        r = {"n": n, "cluster": c, **run_dedup(out, pythonpath=pythonpath)}
        r["ms_per_image"] = round(r["wall_s"] / n * 1e3, 3)
        rows.append(r)
        name = f"{n:,}" + (f" +{c:,}-copy cluster" if c else "")
        print(f"{name:>8} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['peak_rss_mb']:>8,} {r['ms_per_image']:>9.3f}  "
              f"{r['summary']}", flush=True)  # fmt: skip
    return rows


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
    ap.add_argument(
        "--end-to-end", type=int, metavar="N", help="time `dedup --no-verify` on a catalog of N rows"
    )
    ap.add_argument(
        "--catalog", metavar="SIZES", help="end to end on real catalogs + thumbnails, e.g. 10000,30000,100000"
    )
    ap.add_argument(
        "--cluster", type=int, default=0, help="also the largest catalog with a cluster of this many copies"
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/dedup-scale"), help="generated catalogs (kept, reused)"
    )
    ap.add_argument(
        "--code", type=Path, default=ROOT, help="the pipeline checkout to time (PYTHONPATH), for before/after"
    )
    ap.add_argument(
        "--only-cluster", action="store_true", help="only the cluster case (in the largest catalog)"
    )
    ap.add_argument("--label", default="after")
    args = ap.parse_args()
    if args.catalog:
        args.work.mkdir(parents=True, exist_ok=True)
        sizes = [int(s) for s in args.catalog.split(",")]
        rows = catalogs(sizes, args.cluster, args.work, args.code, only_cluster=args.only_cluster)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = ROOT / "bench" / "results" / f"dedup_e2e-{args.label}-{stamp}.json"
        dest.write_text(json.dumps({"code": str(args.code), "rows": rows}, indent=2))
        print(f"written {dest}")
        return
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
