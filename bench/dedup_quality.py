"""Near-duplicate quality: ours vs imagededup (PHash) and imagehash (phash, dhash), same run.

Generates a labelled set (distinct photo-like, document-like and product-shot bases; their
transformed copies; byte-identical copies; hard negatives that share a base's layout and
colours but are different pictures), runs the real ``pipeline run`` + ``pipeline dedup`` on
it, and scores pair precision / recall / F1 overall and per transform. Baselines get their
best threshold on this very set (an advantage we do not get: ours runs at its defaults).

    /tmp/probe/bin/python bench/dedup_quality.py --bases 200 \\
        --baseline-python /tmp/benchvenv4/bin/python      # a venv with imagededup installed

Writes bench/results/dedup_quality.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parent.parent
W, H = 640, 480

# --- bases and hard negatives ---------------------------------------------------------------


def _photo(own: random.Random, layout: random.Random) -> Image.Image:
    """Gradient sky, tint, 14 shapes and noise; the sky, tint and first 7 shapes come from ``layout``."""
    im = Image.linear_gradient("L").rotate(layout.choice([0, 90, 180, 270])).resize((W, H)).convert("RGB")
    im = Image.blend(im, Image.new("RGB", (W, H), tuple(layout.randrange(256) for _ in range(3))), 0.5)
    draw = ImageDraw.Draw(im)
    for k in range(14):
        r = layout if k < 7 else own
        x0, y0 = r.randrange(W), r.randrange(H)
        x1, y1 = x0 + r.randrange(20, W // 2), y0 + r.randrange(20, H // 2)
        colour = tuple(r.randrange(256) for _ in range(3))
        (draw.ellipse if r.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return Image.blend(im, Image.effect_noise((W, H), 20).convert("RGB"), 0.12)


def _document(own: random.Random, layout: random.Random) -> Image.Image:
    """A page of text-like lines: margins, line grid and figure from ``layout``, the words not."""
    im = Image.new("RGB", (W, H), (250, 250, 248))
    draw = ImageDraw.Draw(im)
    margin, step, height = layout.randrange(30, 60), layout.randrange(18, 26), layout.randrange(8, 12)
    for y in range(margin, H - margin, step):
        x = margin + (layout.randrange(0, 40) if layout.random() < 0.2 else 0)
        while x < W - margin - 20:
            word = own.randrange(15, 80)
            draw.rectangle((x, y, min(x + word, W - margin), y + height), fill=(30, 30, 30))
            x += word + own.randrange(6, 14)
    if layout.random() < 0.5:  # a figure block
        fx, fy = layout.randrange(margin, W // 2), layout.randrange(margin, H // 2)
        draw.rectangle(
            (fx, fy, fx + W // 3, fy + H // 4), fill=tuple(layout.randrange(256) for _ in range(3))
        )
    return im


def _product(own: random.Random, layout: random.Random) -> Image.Image:
    """One object on a plain background: background and colour from ``layout``, the object not."""
    bg = tuple(230 + layout.randrange(25) for _ in range(3))
    colour = tuple(layout.randrange(200) for _ in range(3))
    im = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(im)
    cx, cy = W // 2 + own.randrange(-60, 61), H // 2 + own.randrange(-40, 41)
    w, h = own.randrange(80, 220), own.randrange(80, 200)
    shape = own.choice(["ellipse", "rectangle", "polygon"])
    if shape == "polygon":
        draw.polygon([(cx, cy - h), (cx + w, cy + h), (cx - w, cy + h)], fill=colour)
    else:
        getattr(draw, shape)((cx - w, cy - h, cx + w, cy + h), fill=colour)
    light = tuple(min(255, c + 60) for c in colour)
    for _ in range(3):  # highlights and a label
        x, y = own.randrange(cx - w // 2, cx + w // 2), own.randrange(cy - h // 2, cy + h // 2)
        draw.rectangle((x, y, x + own.randrange(10, 60), y + own.randrange(5, 25)), fill=light)
    return im


KINDS = {"photo": _photo, "document": _document, "product": _product}

# --- transforms --------------------------------------------------------------------------


def _crop(im: Image.Image, frac: float, rng: random.Random) -> Image.Image:
    dx, dy = int(im.width * frac), int(im.height * frac)
    left, top = rng.randint(0, dx), rng.randint(0, dy)
    return im.crop((left, top, im.width - (dx - left), im.height - (dy - top)))


def _watermark(im: Image.Image, rng: random.Random) -> Image.Image:
    im = im.convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=36)
    x, y = rng.randrange(10, im.width // 2), rng.randrange(im.height // 2, im.height - 50)
    draw.text((x, y), "© stock photo", fill=(255, 255, 255, 140), font=font)
    return Image.alpha_composite(im, layer).convert("RGB")


# name -> (function(image, rng) -> image, file format, save params)
TRANSFORMS = {
    "resize50": (lambda im, r: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), "JPEG", {"quality": 90}),
    "resize25": (lambda im, r: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS), "JPEG", {"quality": 90}),
    "jpeg_q30": (lambda im, r: im, "JPEG", {"quality": 30}),
    "png": (lambda im, r: im, "PNG", {}),
    "webp": (lambda im, r: im, "WEBP", {"quality": 75}),
    "crop5": (lambda im, r: _crop(im, 0.05, r), "JPEG", {"quality": 90}),
    "crop10": (lambda im, r: _crop(im, 0.10, r), "JPEG", {"quality": 90}),
    "brightness": (lambda im, r: ImageEnhance.Brightness(im).enhance(r.choice([0.75, 1.3])), "JPEG", {"quality": 90}),
    "contrast": (lambda im, r: ImageEnhance.Contrast(im).enhance(r.choice([0.7, 1.4])), "JPEG", {"quality": 90}),
    "grayscale": (lambda im, r: ImageOps.grayscale(im), "JPEG", {"quality": 90}),
    "watermark": (_watermark, "JPEG", {"quality": 90}),
    "rotate3": (lambda im, r: im.rotate(r.choice([-3, 3]), Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0)), "JPEG", {"quality": 90}),
}  # fmt: skip
SIBLING_TRANSFORMS = ("resize50", "grayscale")  # hard negatives get copies too
EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def _save(im: Image.Image, path: Path, fmt: str, params: dict) -> None:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    path.write_bytes(buffer.getvalue())


def generate(folder: Path, bases: int, seed: int) -> dict[str, dict[str, str]]:
    """Write the images; return {file: {"group": ..., "transform": ..., "kind": ...}}."""
    folder.mkdir(parents=True, exist_ok=True)
    labels: dict[str, dict[str, str]] = {}
    kinds = list(KINDS)
    for b in range(bases):
        kind = kinds[b % len(kinds)]
        rng = random.Random(seed * 1_000_003 + b)
        layout = rng.random()  # base and hard negative share it
        base = KINDS[kind](random.Random(rng.random()), random.Random(layout))
        sibling = KINDS[kind](random.Random(rng.random()), random.Random(layout))
        group, sgroup = f"b{b:04d}", f"b{b:04d}s"
        name = f"{group}_orig.jpg"
        _save(base, folder / name, "JPEG", {"quality": 90})
        labels[name] = {"group": group, "transform": "original", "kind": kind}
        shutil.copyfile(folder / name, folder / f"{group}_exact.jpg")
        labels[f"{group}_exact.jpg"] = {"group": group, "transform": "exact", "kind": kind}
        for t, (fn, fmt, params) in TRANSFORMS.items():
            name = f"{group}_{t}.{EXT[fmt]}"
            _save(fn(base, rng), folder / name, fmt, params)
            labels[name] = {"group": group, "transform": t, "kind": kind}
        name = f"{sgroup}_orig.jpg"
        _save(sibling, folder / name, "JPEG", {"quality": 90})
        labels[name] = {"group": sgroup, "transform": "sibling", "kind": kind}
        for t in SIBLING_TRANSFORMS:
            fn, fmt, params = TRANSFORMS[t]
            name = f"{sgroup}_{t}.{EXT[fmt]}"
            _save(fn(sibling, rng), folder / name, fmt, params)
            labels[name] = {"group": sgroup, "transform": f"sibling_{t}", "kind": kind}
    return labels


# --- methods ---------------------------------------------------------------------------------

Pairs = dict[tuple[str, str], int]  # unordered pair -> distance (ours: 0)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def run_ours(folder: Path, work: Path) -> tuple[set[tuple[str, str]], float]:
    out = work / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "run", str(folder), "-o", str(out), "-q"], check=True, env=env
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "dedup", str(out)], check=True, env=env)
    elapsed = time.perf_counter() - started
    found = json.loads((out / "duplicates.json").read_text())
    return {_pair(k, d) for k, dups in found.items() for d in dups}, elapsed


def run_imagehash(folder: Path, names: list[str], fn) -> tuple[Pairs, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    hashes = np.array([int(str(fn(Image.open(folder / n))), 16) for n in names], dtype=np.uint64)
    pairs = _all_pairs_within(names, hashes, 20)
    return pairs, time.perf_counter() - started


def _all_pairs_within(names: list[str], hashes: np.ndarray, limit: int) -> Pairs:
    pairs: Pairs = {}
    for i in range(len(names)):
        d = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
        for j in np.flatnonzero(d <= limit):
            pairs[_pair(names[i], names[i + 1 + j])] = int(d[j])
    return pairs


_IMAGEDEDUP = """
import json, sys, time
from imagededup.methods import PHash
t = time.perf_counter()
ph = PHash(verbose=False)
enc = ph.encode_images(image_dir=sys.argv[1])
dups = ph.find_duplicates(encoding_map=enc, max_distance_threshold=20, scores=True)
print(json.dumps({"elapsed": time.perf_counter() - t, "dups": dups}))
"""


def run_imagededup(folder: Path, python: str | None) -> tuple[Pairs | None, float, str]:
    if not python:
        return None, 0.0, "no --baseline-python given"
    proc = subprocess.run(
        [python, "-c", _IMAGEDEDUP, str(folder)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        return None, 0.0, proc.stderr.strip().splitlines()[-1]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    pairs: Pairs = {}
    for k, dups in data["dups"].items():
        for other, d in dups:
            pairs[_pair(k, other)] = int(d)
    return pairs, data["elapsed"], ""


# --- scoring ---------------------------------------------------------------------------------


def _score(predicted: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, float]:
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
            "predicted": len(predicted), "true": len(truth)}  # fmt: skip


def score(predicted: set[tuple[str, str]], truth: set[tuple[str, str]], labels: dict) -> dict:
    """Overall and per transform (pairs with at least one member of that transform)."""
    result = {"all": _score(predicted, truth)}
    for t in sorted({v["transform"] for v in labels.values()}):
        involved = {n for n, v in labels.items() if v["transform"] == t}
        result[t] = _score(_touching(predicted, involved), _touching(truth, involved))
    return result


def _touching(pairs: set[tuple[str, str]], names: set[str]) -> set[tuple[str, str]]:
    return {p for p in pairs if p[0] in names or p[1] in names}


def best_threshold(pairs: Pairs, truth: set[tuple[str, str]]) -> tuple[int, set[tuple[str, str]]]:
    best = max(range(21), key=lambda t: _score({p for p, d in pairs.items() if d <= t}, truth)["f1"])
    return best, {p for p, d in pairs.items() if d <= best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", type=int, default=200, help="distinct base pictures (~16 files each)")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--baseline-python", help="python of a venv with imagededup installed")
    ap.add_argument("--keep", type=Path, help="keep the generated set and run here")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="dedup-quality-"))
    folder = work / "images"
    started = time.perf_counter()
    labels = generate(folder, args.bases, args.seed)
    names = sorted(labels)
    print(
        f"{len(names):,} images from {args.bases} bases in {time.perf_counter() - started:.0f} s ({folder})"
    )
    by_group: dict[str, list[str]] = {}
    for n in names:
        by_group.setdefault(labels[n]["group"], []).append(n)
    truth = {_pair(a, b) for members in by_group.values() for a, b in itertools.combinations(members, 2)}

    methods: dict[str, dict] = {}
    ours, elapsed = run_ours(folder, work)
    methods["ours (pipeline dedup, defaults)"] = {
        "threshold": "default",
        "seconds": round(elapsed, 2),
        "scores": score(ours, truth, labels),
    }
    for name, fn in (("imagehash phash", imagehash.phash), ("imagehash dhash", imagehash.dhash)):
        pairs, elapsed = run_imagehash(folder, names, fn)
        t, chosen = best_threshold(pairs, truth)
        methods[name] = {"threshold": t, "seconds": round(elapsed, 2), "scores": score(chosen, truth, labels)}
    pairs, elapsed, why = run_imagededup(folder, args.baseline_python)
    if pairs is None:
        methods["imagededup PHash"] = {"blocked": why}
    else:
        t, chosen = best_threshold(pairs, truth)
        methods["imagededup PHash"] = {
            "threshold": t,
            "seconds": round(elapsed, 2),
            "scores": score(chosen, truth, labels),
        }

    _print(methods, labels)
    dest = ROOT / "bench" / "results" / "dedup_quality.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(
        json.dumps(
            {"images": len(names), "bases": args.bases, "seed": args.seed, "methods": methods}, indent=2
        )
    )
    print(f"written {dest}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _print(methods: dict, labels: dict) -> None:
    print(f"\n{'method':<34} {'thr':>7} {'P':>6} {'R':>6} {'F1':>6} {'pairs':>7} {'s':>6}")
    for name, m in methods.items():
        if "blocked" in m:
            print(f"{name:<34} blocked: {m['blocked']}")
            continue
        a = m["scores"]["all"]
        print(
            f"{name:<34} {m['threshold']!s:>7} {a['precision']:>6.3f} {a['recall']:>6.3f} {a['f1']:>6.3f} {a['predicted']:>7} {m['seconds']:>6.1f}"
        )
    scored = [(n, m) for n, m in methods.items() if "scores" in m]
    transforms = [t for t in next(iter(scored))[1]["scores"] if t != "all"]
    print("\nper transform: F1 (P/R)")
    print(f"{'transform':<20}" + "".join(f"{n[:22]:>24}" for n, _ in scored))
    for t in transforms:
        cells = "".join(
            f"{m['scores'][t]['f1']:>8.3f} ({m['scores'][t]['precision']:.2f}/{m['scores'][t]['recall']:.2f})"
            for _, m in scored
        )
        print(f"{t:<20}{cells}")


if __name__ == "__main__":
    main()
