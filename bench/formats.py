"""CPU-ms per image of ``process_image`` for each input format, two code trees alternating.

    python -m bench.formats --before /tmp/before [--after .] [--rounds 5]

The corpus (made once, seeded, cached in ``/tmp/pipeline-formats-corpus``; ``--corpus``):
real photographs from ``bench/photos.py`` (scikit-image's, cropped, scaled up, with grain)
in JPEG baseline and progressive, PNG, PNG + alpha, WebP lossy (q80) and lossless, AVIF
(q60) and GIF, at two sizes: **web** (1600x1000 and 1200x1500, 1.6-1.8 MP, three photos
each) and **camera** (4000x3000, 12 MP, one photo).

Each round runs one child process per tree, in turn (A B A B ...), each holding
``/tmp/bench.lock`` (flock) while it measures: one untimed pass over the corpus (imports,
plugin registration, caches), then every file ``--passes`` times through
``process_image`` with the default options except ``keep_originals=False`` (a 256 px q85
JPEG thumbnail, dHash, pHash; the original's copy is I/O, not decoding), into a fresh store
on /dev/shm for each pass (an existing thumbnail would not be encoded again), timed with ``time.process_time`` (the child's CPU time: decoder threads count).
Reported per (format, size): the median over rounds of the mean CPU-ms per image, before,
after and the ratio; and the PSNR of the tree's 256 px thumbnail, written as PNG (the
resize chain's pixels, without JPEG's own loss), against a full decode + EXIF transpose +
LANCZOS of the same file (``bench/run.py``'s method), the minimum over the cell's files.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("jpeg", "jpeg-progressive", "png", "png-alpha", "webp", "webp-lossless", "avif", "gif")
SIZES = {"web": ((1600, 1000), (1200, 1500), (1600, 1000)), "camera": ((4000, 3000),)}
CORPUS = Path(os.environ.get("BENCH_FORMATS_CORPUS", "/tmp/pipeline-formats-corpus"))
LOCK = "/tmp/bench.lock"


def make_corpus(folder: Path) -> list[Path]:
    """Every (format, size class, photo) file; made once."""
    from bench.photos import encode, photo

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for size_class, dims in SIZES.items():
        for index, (w, h) in enumerate(dims):
            image = None
            for fmt in FORMATS:
                path = folder / f"{size_class}-{index}.{fmt}"
                files.append(path)
                if path.exists():
                    continue
                if image is None:
                    image = photo(1000 + 17 * index + (7 if size_class == "camera" else 0), w, h)
                if fmt == "webp-lossless":
                    out = io.BytesIO()
                    image.save(out, "WEBP", lossless=True, quality=50, method=3)
                    data = out.getvalue()
                else:
                    data = encode(image, fmt)
                tmp = path.with_suffix(".part")
                tmp.write_bytes(data)
                tmp.rename(path)
    return files


def _cell(path: Path) -> tuple[str, str]:
    size_class = path.name.split("-", 1)[0]
    return path.suffix[1:], size_class


# -- child: one tree, one round ------------------------------------------------------------


def child(tree: str, corpus: Path, passes: int, psnr: bool) -> None:
    sys.path.insert(0, tree)
    import numpy as np
    from PIL import Image, ImageOps

    import pipeline
    from pipeline.config import ProcessOptions
    try:
        from pipeline.store.local import Store
    except ModuleNotFoundError:  # a tree from before the store/ package (issue 15)
        from pipeline.store import Store  # type: ignore[no-redef]

    try:
        from pipeline.image import process
    except ModuleNotFoundError:  # a tree from before the image/ package (issue 15)
        from pipeline import process  # type: ignore[no-redef]

    Image.init()  # every plugin: AVIF and WebP are not among Pillow's preloaded ones
    options = ProcessOptions(keep_originals=False, formats=tuple(Image.OPEN))
    files = sorted(p for p in corpus.iterdir() if p.suffix[1:] in FORMATS)
    blobs = {p: p.read_bytes() for p in files}
    result: dict[str, object] = {"tree": str(Path(pipeline.__file__).parent.parent)}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as scratch:
        store = Store(Path(scratch))
        for data in blobs.values():  # warm-up, untimed
            process.process_image(data, options=options, store=store)
        if psnr:
            png = ProcessOptions(keep_originals=False, thumb_format="png", formats=options.formats)
            found: dict[str, float] = {}
            for path, data in blobs.items():
                info = process.process_image(data, options=png, store=store)
                thumb = info.thumbnails[0]
                ours = np.asarray(Image.open(Path(scratch) / thumb.path).convert("RGB"), np.float64)
                full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
                ref = np.asarray(
                    full.resize((thumb.width, thumb.height), Image.Resampling.LANCZOS), np.float64
                )
                mse = float(np.mean((ours - ref) ** 2))
                found[path.name] = 10 * float(np.log10(255.0**2 / mse)) if mse else 99.0
            result["psnr"] = found
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cpu: dict[str, float] = {}
            # A store per pass: a thumbnail that exists is not encoded again.
            stores = [Store(Path(scratch) / f"pass{i}") for i in range(passes)]
            for path, data in blobs.items():
                started = time.process_time()
                for fresh in stores:
                    process.process_image(data, options=options, store=fresh)
                cpu[path.name] = (time.process_time() - started) / passes * 1000.0
        result["cpu_ms"] = cpu
    print(json.dumps(result))


# -- parent ----------------------------------------------------------------------------------


def _run_child(tree: str, corpus: Path, passes: int, psnr: bool) -> dict[str, object]:
    cmd = [
        sys.executable,
        "-m",
        "bench.formats",
        "--child",
        tree,
        "--corpus",
        str(corpus),
        "--passes",
        str(passes),
    ]
    if psnr:
        cmd.append("--psnr")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="tree whose pipeline/ is 'before' (git archive)")
    parser.add_argument(
        "--after", default=str(ROOT), help="tree whose pipeline/ is 'after' (default: this one)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=2, help="times each file is processed per round")
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--psnr", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    corpus = Path(args.corpus)
    if args.child:
        child(args.child, corpus, args.passes, args.psnr)
        return

    if not args.before:
        parser.error("--before is required")
    make_corpus(corpus)
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    samples: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    psnr: dict[str, dict[str, float]] = {}
    for rnd in range(args.rounds):
        order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
        for name in order:
            out = _run_child(trees[name], corpus, args.passes, psnr=rnd < 2 and name not in psnr)
            if "psnr" in out:
                psnr[name] = out["psnr"]  # type: ignore[assignment]
            samples[name].append(out["cpu_ms"])  # type: ignore[arg-type]
            print(
                f"round {rnd + 1} {name}: {sum(out['cpu_ms'].values()):.0f} ms", file=sys.stderr, flush=True
            )  # type: ignore[union-attr]

    cells: dict[tuple[str, str], list[str]] = {}
    for fname in samples["before"][0]:
        cells.setdefault(_cell(Path(fname)), []).append(fname)
    print("| format | size | CPU-ms/img before | after | after/before | PSNR dB before | after |")
    print("|---|---|---:|---:|---:|---:|---:|")
    table = []
    for size_class in SIZES:
        for fmt in FORMATS:
            names = cells.get((fmt, size_class), [])
            if not names:
                continue
            med = {
                k: statistics.median(statistics.mean(s[n] for n in names) for s in samples[k])
                for k in samples
            }
            db = {k: min(psnr[k][n] for n in names) for k in psnr}
            table.append(
                {"format": fmt, "size": size_class, **{f"{k}_ms": v for k, v in med.items()}, "psnr": db}
            )
            print(
                f"| {fmt} | {size_class} | {med['before']:.1f} | {med['after']:.1f} | "
                f"{med['after'] / med['before']:.2f} | {db.get('before', float('nan')):.1f} | "
                f"{db.get('after', float('nan')):.1f} |"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"trees": trees, "samples": samples, "psnr": psnr, "table": table}, indent=1)
        )


if __name__ == "__main__":
    main()
