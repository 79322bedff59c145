"""Near-duplicate quality (issue 13): where ours loses a copy, and how it stands against anchors.

Generates a labelled set (bench/dedup_gen.py: real photographs and photo-like, document,
product and screenshot bases; transformed copies, byte-identical copies, hard negatives),
runs the real ``pipeline run`` + ``pipeline dedup`` on it at dedup's defaults, and reports:

- per transform, for each original-to-copy pair, how far through dedup it got: **reached**
  the candidates (pHash within dedup's default ``max_distance``, computed from the pHashes
  the run stored in the catalog with dedup's defaults read from the tree: dedup writes its
  candidate list nowhere), **hash ok** (and pHash + dHash <= ``max_sum``), **thumb ok** (and
  the thumbnail verdict the catalog's ``dedup_pairs`` holds for the two contents is
  >= ``min_similarity``) and **accepted** (one group in ``duplicates.json``; a copy can get
  there through another copy, so this may exceed thumb ok), so a loss is located;
- pair precision, recall and F1 over every same-picture pair, original-to-copy recall, and
  the hard-negative join rate (a negative joined to its base's picture, per negative kind);
- anchors, scored the same way on raw pairs within their threshold: imagehash phash, dhash,
  phash + dhash, imagededup PHash and PDQ (pdqhash). Their thresholds are tuned for F1 on
  this set, or taken from an earlier run's JSON (``--thresholds``: tune on seed 1, report
  seed 2 with seed 1's thresholds).

    PYTHONPATH=$PWD python bench/dedup_quality.py --seed 1 --baseline-python /tmp/benchvenv5/bin/python
    PYTHONPATH=$PWD python bench/dedup_quality.py --seed 2 --baseline-python /tmp/benchvenv5/bin/python \\
        --thresholds bench/results/dedup_quality-seed1.json
    ... --pipeline-tree /work/main      # run ``pipeline`` from another checkout (before/after)

Writes bench/results/dedup_quality-seed<N>.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.dedup_gen import TRANSFORMS, generate

ROOT = Path(__file__).resolve().parent.parent
Pair = tuple[str, str]
Pairs = dict[Pair, int]  # unordered pair -> distance
TARGET_RECALL = 0.90  # rotations <= 5 degrees, crops <= 10%, watermarks
TARGET_KEEP = 0.99  # transforms already there must stay there
TARGET_PRECISION = 0.99
TARGET_JOIN = 0.01
TARGETED = {
    "rotate1", "rotate2", "rotate3", "rotate5", "straighten3", "crop5", "crop10", "crop5_even",
    "crop10_even", "crop5_side", "crop10_side", "watermark", "wm_text_small", "wm_text_large",
    "wm_logo", "wm_banner",
}  # fmt: skip


def _pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


# --- ours ----------------------------------------------------------------------------------

_DEFAULTS = """
import json
from pipeline.config import DedupOptions
o = DedupOptions()
print(json.dumps({"max_distance": o.max_distance, "max_sum": o.max_sum, "min_similarity": o.min_similarity}))
"""


# The candidate pairs of the tree's dedup (pHash radius and, if it has them, the variant
# hashes), from its own search functions: dedup writes no candidate list (and streams its
# pairs, dropping those whose ends are already one group), and "reached" must say what the
# search finds, not what pHash alone would. Private names: if the tree has other ones,
# "reached" falls back to the pHash radius (and says so).
_CANDIDATES = """
import json, sys
from pathlib import Path
import numpy as np
from pipeline.catalog import Catalog
from pipeline.config import DedupOptions
try:  # the package layout (pipeline/dedup/, issue 15)
    from pipeline.dedup import index as d
    from pipeline.dedup.items import load_items, thumb_paths
    from pipeline.dedup import search as _search
    VARIANT_RADIUS = _search.VARIANT_RADIUS
    BAND_RADIUS = getattr(_search, "BAND_RADIUS", VARIANT_RADIUS)
    from pipeline.dedup.thumbcheck import ThumbnailCheck
    try:
        from pipeline.dedup.views import BAND_COLUMNS
    except ImportError:  # before the views had a module
        from pipeline.dedup.thumbcheck import BAND_COLUMNS
except ImportError:  # pipeline/dedup.py and pipeline/thumbcheck.py
    from pipeline import dedup as d
    from pipeline.thumbcheck import ThumbnailCheck
    load_items, thumb_paths = d._load, d._thumb_paths
    VARIANT_RADIUS = getattr(d, "VARIANT_RADIUS", None)
    BAND_COLUMNS = getattr(d, "BAND_COLUMNS", ())
    BAND_RADIUS = VARIANT_RADIUS
out = Path(sys.argv[1])
with Catalog(out / "catalog.sqlite") as cat:
    items, hashed = load_items(cat)
    first = {}
    for i, s in enumerate(items.sha):
        first.setdefault(s, i)
    contents = np.fromiter(first.values(), np.int64, len(first))
    contents = contents[hashed[contents]]
    check = ThumbnailCheck(out, thumb_paths(cat, items.rows[contents]), {})
    ph = items.phash[contents]
    i, j, _ = d.pairs_within(ph, DedupOptions().max_distance)
    pairs = set(zip(contents[i].tolist(), contents[j].tolist()))
    if VARIANT_RADIUS is not None:  # the variants' search, every pair (dedup streams them)
        variants = np.vstack([check.variant_hashes(int(r)) for r in contents])
        width = variants.shape[1]
        q, h, _ = d.pairs_across(variants.ravel(), ph, VARIANT_RADIUS)
        pairs |= {(int(contents[x // width]), int(contents[y])) for x, y in zip(q.tolist(), h.tolist()) if x // width != y}
        for column in BAND_COLUMNS:  # band-cut variants against each other
            i, j, _ = d.pairs_within(np.ascontiguousarray(variants[:, column]), BAND_RADIUS)
            pairs |= set(zip(contents[i].tolist(), contents[j].tolist()))
print(json.dumps([[items.sha[x], items.sha[y]] for x, y in pairs]))
"""


def candidate_pairs(out: Path, env: dict[str, str]) -> set[tuple[str, str]] | None:
    """The SHA-256 pairs the tree's candidate search finds (None: its names differ)."""
    proc = subprocess.run(
        [sys.executable, "-c", _CANDIDATES, str(out)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        print(
            f"candidate search not reproduced ({proc.stderr.strip().splitlines()[-1]}): reached = pHash radius"
        )
        return None
    return {(min(a, b), max(a, b)) for a, b in json.loads(proc.stdout)}


def run_ours(folder: Path, work: Path, tree: Path, *, reuse: bool = False) -> dict:
    """``pipeline run`` + ``pipeline dedup`` from ``tree``; what the catalog says about each pair.

    ``reuse``: a kept run's catalog is deduplicated again (its cached verdicts dropped, so
    every check is made by ``tree``'s verifier) without running ``pipeline run``."""
    out = work / "out"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cli = str(tree / "cli.py")
    started = time.perf_counter()
    if reuse and (out / "catalog.sqlite").exists():
        with sqlite3.connect(out / "catalog.sqlite") as db:
            db.execute("DELETE FROM dedup_pairs")
    else:
        subprocess.run([sys.executable, cli, "run", str(folder), "-o", str(out), "-q"], check=True, env=env)
    run_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, cli, "dedup", str(out)], check=True, env=env)
    dedup_s = time.perf_counter() - started
    defaults = json.loads(
        subprocess.run(
            [sys.executable, "-c", _DEFAULTS], env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    found = json.loads((out / "duplicates.json").read_text())
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT key, sha256, phash, dhash FROM items WHERE status = 'ok'").fetchall()
        verdicts = {(a, b): s for a, b, s in db.execute("SELECT a, b, similarity FROM dedup_pairs")}
    return {
        "candidates": candidate_pairs(out, env),
        "grouped": {_pair(k, d) for k, dups in found.items() for d in dups},
        "hashes": {k: (sha, int(p, 16), int(d, 16)) for k, sha, p, d in rows},
        "verdicts": verdicts,
        "defaults": defaults,
        "run_s": run_s,
        "dedup_s": dedup_s,
    }


def stages(ours: dict, a: str, b: str) -> dict[str, bool]:
    """How far through dedup's stages the pair (a, b) got; each stage includes the ones before.

    ``accepted`` is the grouping, which can exceed ``thumb_ok``: a copy the rule refuses
    against its original may still join the group through another copy.
    """
    sha_a, pa, da = ours["hashes"][a]
    sha_b, pb, db = ours["hashes"][b]
    opts = ours["defaults"]
    dp, dd = (pa ^ pb).bit_count(), (da ^ db).bit_count()
    same = sha_a == sha_b
    verdict = ours["verdicts"].get((min(sha_a, sha_b), max(sha_a, sha_b)))
    cands = ours["candidates"]
    reached = same or (
        dp <= opts["max_distance"] if cands is None else (min(sha_a, sha_b), max(sha_a, sha_b)) in cands
    )
    hash_ok = same or (reached and dp + dd <= opts["max_sum"])
    return {
        "reached": reached,
        "hash_ok": hash_ok,
        "thumb_ok": same or (hash_ok and verdict is not None and verdict >= opts["min_similarity"]),
        "accepted": _pair(a, b) in ours["grouped"],
        "verdict_stored": same or verdict is not None,  # observed: checked for any reason
    }


# --- anchors -------------------------------------------------------------------------------


def _pdq(im: Image.Image) -> int:
    import pdqhash

    bits, _quality = pdqhash.compute(np.asarray(im.convert("RGB")))
    return int("".join("1" if x else "0" for x in bits), 2)


def anchor_hashes(folder: Path, names: list[str]) -> tuple[dict[str, np.ndarray], float]:
    """imagehash phash, dhash (64 bits) and PDQ (256 bits, as 4 uint64) of every image."""
    started = time.perf_counter()
    ph, dh, pdq = [], [], []
    for n in names:
        with Image.open(folder / n) as im:
            im.load()
            ph.append(int(str(imagehash.phash(im)), 16))
            dh.append(int(str(imagehash.dhash(im)), 16))
            pdq.append(_pdq(im))
    words = [[(h >> (64 * k)) & (2**64 - 1) for k in range(4)] for h in pdq]
    hashes = {
        "phash": np.array(ph, dtype=np.uint64),
        "dhash": np.array(dh, dtype=np.uint64),
        "pdq": np.array(words, dtype=np.uint64),
    }
    return hashes, time.perf_counter() - started


def _distances_within(names: list[str], dist_row: Callable[[int], np.ndarray], limit: int) -> Pairs:
    pairs: Pairs = {}
    for i in range(len(names) - 1):
        d = dist_row(i)
        for j in np.flatnonzero(d <= limit):
            pairs[_pair(names[i], names[i + 1 + j])] = int(d[j])
    return pairs


def anchor_pairs(names: list[str], hashes: dict[str, np.ndarray]) -> dict[str, tuple[Pairs, range]]:
    """Every pair each hash anchor could call a duplicate, with its distance; thresholds to try."""
    ph, dh, pdq = hashes["phash"], hashes["dhash"], hashes["pdq"]

    def bits(h: np.ndarray, i: int) -> np.ndarray:
        return np.bitwise_count(h[i + 1 :] ^ h[i]).astype(np.int64)

    return {
        "imagehash phash": (_distances_within(names, lambda i: bits(ph, i), 24), range(25)),
        "imagehash dhash": (_distances_within(names, lambda i: bits(dh, i), 24), range(25)),
        "imagehash phash+dhash": (
            _distances_within(names, lambda i: bits(ph, i) + bits(dh, i), 48),
            range(49),
        ),
        "PDQ (pdqhash)": (
            _distances_within(names, lambda i: bits(pdq, i).sum(axis=1), 110),
            range(0, 111, 2),
        ),
    }


_IMAGEDEDUP = """
import json, sys, time
from imagededup.methods import PHash
t = time.perf_counter()
ph = PHash(verbose=False)
enc = ph.encode_images(image_dir=sys.argv[1])
dups = ph.find_duplicates(encoding_map=enc, max_distance_threshold=24, scores=True)
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


# --- scoring -------------------------------------------------------------------------------


def _prf(predicted: set[Pair], truth: set[Pair]) -> dict[str, float]:
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
            "predicted": len(predicted), "true": len(truth)}  # fmt: skip


class Truth:
    """The labels, as the pairs each figure is computed over."""

    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.labels = labels
        by_group: dict[str, list[str]] = {}
        for n in sorted(labels):
            by_group.setdefault(labels[n]["group"], []).append(n)
        self.pairs = {_pair(a, b) for m in by_group.values() for a, b in itertools.combinations(m, 2)}
        orig = {v["base"]: n for n, v in labels.items() if v["role"] == "original"}
        # transform -> [(original, copy)]
        self.copies: dict[str, list[Pair]] = {}
        for n, v in labels.items():
            if v["role"] in ("copy", "exact"):
                self.copies.setdefault(v["transform"], []).append((orig[v["base"]], n))
        # negative kind -> [(files of the base's picture, files of the negative)]
        self.negatives: dict[str, list[tuple[list[str], list[str]]]] = {}
        for n, v in labels.items():
            if v["role"] == "negative":
                neg = by_group[v["group"]]
                self.negatives.setdefault(v["transform"], []).append((by_group[v["base"]], neg))

    def score(self, predicted: set[Pair]) -> dict:
        recall = {
            t: round(sum(_pair(*p) in predicted for p in ps) / len(ps), 4)
            for t, ps in sorted(self.copies.items())
        }
        copies = [p for ps in self.copies.values() for p in ps]
        joins = {
            kind: round(
                sum(any(_pair(a, b) in predicted for a in base for b in neg) for base, neg in cases)
                / len(cases),
                4,
            )
            for kind, cases in sorted(self.negatives.items())
        }
        cases = [c for cs in self.negatives.values() for c in cs]
        joined = sum(any(_pair(a, b) in predicted for a in base for b in neg) for base, neg in cases)
        return {
            **_prf(predicted, self.pairs),
            "copy_recall": round(sum(_pair(*p) in predicted for p in copies) / len(copies), 4),
            "negative_join_rate": round(joined / len(cases), 4),
            "per_transform_recall": recall,
            "per_negative_join_rate": joins,
        }


def best_threshold(pairs: Pairs, grid: range, truth: Truth) -> int:
    return max(grid, key=lambda t: (_prf({p for p, d in pairs.items() if d <= t}, truth.pairs)["f1"], -t))


# --- the run -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", type=int, default=200, help="distinct base pictures (~15 files each)")
    ap.add_argument(
        "--copies", type=int, default=10, help=f"transformed copies per base (of {len(TRANSFORMS)})"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline-python", help="python of a venv with imagededup installed")
    ap.add_argument(
        "--pipeline-tree", type=Path, default=ROOT, help="checkout whose pipeline to run (default: this one)"
    )
    ap.add_argument(
        "--thresholds", type=Path, help="an earlier run's JSON: use its anchors' thresholds, do not tune"
    )
    ap.add_argument("--keep", type=Path, help="keep the generated set and run here")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: reuse its images and its run, redo only `pipeline dedup` (verifier iterations)",
    )
    ap.add_argument("--ours-only", action="store_true", help="skip the anchors (iterations on ours)")
    ap.add_argument(
        "--out", type=Path, help="JSON to write (default bench/results/dedup_quality-seed<N>.json)"
    )
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="dedup-quality-"))
    folder = work / "images"
    started = time.perf_counter()
    saved = work / "labels.json"
    if args.reuse and args.keep and saved.exists():
        labels = json.loads(saved.read_text())
    else:
        labels = generate(folder, args.bases, args.seed, args.copies)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(labels))
    names = sorted(labels)
    gen_s = time.perf_counter() - started
    print(
        f"{len(names):,} images from {args.bases} bases (seed {args.seed}) in {gen_s:.0f} s ({folder})",
        flush=True,
    )
    truth = Truth(labels)
    tree = args.pipeline_tree.resolve()
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    fixed = json.loads(args.thresholds.read_text())["thresholds"] if args.thresholds else {}

    ours = run_ours(folder, work, tree, reuse=args.reuse and args.keep is not None)
    per_stage: dict[str, dict[str, float]] = {}
    for t, ps in sorted(truth.copies.items()):
        got = [stages(ours, a, b) for a, b in ps]
        per_stage[t] = {s: round(sum(g[s] for g in got) / len(got), 4) for s in got[0]} | {"n": len(got)}
    by_kind: dict[str, dict[str, float]] = {}  # accepted share per transform and base kind
    for t, ps in sorted(truth.copies.items()):
        for kind in sorted({labels[b]["kind"] for _, b in ps}):
            mine = [p for p in ps if labels[p[1]]["kind"] == kind]
            by_kind.setdefault(t, {})[kind] = round(
                sum(_pair(*p) in ours["grouped"] for p in mine) / len(mine), 4
            )
    methods: dict[str, dict] = {
        "ours": {
            "threshold": "defaults",
            "seconds": round(ours["dedup_s"], 1),
            **truth.score(ours["grouped"]),
        }
    }
    print(f"pipeline run {ours['run_s']:.0f} s, dedup {ours['dedup_s']:.0f} s", flush=True)

    hashes, hash_s = anchor_hashes(folder, names) if not args.ours_only else ({}, 0.0)
    candidates = anchor_pairs(names, hashes) if not args.ours_only else {}
    imagededup, dedup_s, why = (
        run_imagededup(folder, args.baseline_python) if not args.ours_only else (None, 0.0, "--ours-only")
    )
    if imagededup is not None:
        candidates["imagededup PHash"] = (imagededup, range(25))
    thresholds: dict[str, int] = {}
    for name, (pairs, grid) in candidates.items():
        tuned = best_threshold(pairs, grid, truth)
        t = fixed.get(name, tuned)
        thresholds[name] = t
        chosen = {p for p, d in pairs.items() if d <= t}
        seconds = dedup_s if name == "imagededup PHash" else hash_s
        methods[name] = {
            "threshold": t,
            "best_here": tuned,
            "seconds": round(seconds, 1),
            **truth.score(chosen),
        }
    if imagededup is None:
        methods["imagededup PHash"] = {"blocked": why}

    result = {
        "images": len(names), "bases": args.bases, "copies": args.copies, "seed": args.seed,
        "pipeline_tree": str(tree), "pipeline_commit": head.stdout.strip(), "dedup_defaults": ours["defaults"],
        "thresholds_from": str(args.thresholds) if args.thresholds else "tuned on this set",
        "thresholds": thresholds, "seconds": {"generate": round(gen_s), "run": round(ours["run_s"]),
                                              "dedup": round(ours["dedup_s"]), "anchor_hashes": round(hash_s)},
        "stages": per_stage, "accepted_by_kind": by_kind, "methods": methods,
    }  # fmt: skip
    _print(result)
    dest = args.out or ROOT / "bench" / "results" / f"dedup_quality-seed{args.seed}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {dest}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _print(result: dict) -> None:
    methods = result["methods"]
    print(f"\nseed {result['seed']}, {result['images']} images, pipeline {result['pipeline_commit']} "
          f"defaults {result['dedup_defaults']}")  # fmt: skip
    print("\nours, original-to-copy pairs by stage (share of the pairs that got through it)")
    anchors = [n for n in methods if n != "ours" and "blocked" not in n and "blocked" not in methods[n]]
    short = {
        n: n.replace("imagehash ", "").replace(" (pdqhash)", "").replace("imagededup ", "idd ")
        for n in anchors
    }
    print(
        f"{'transform':<28}{'n':>4}{'reached':>9}{'hash ok':>9}{'thumb':>7}{'accept':>8}  target"
        + "".join(f"{short[n][:11]:>12}" for n in anchors)
    )
    for t, s in result["stages"].items():
        target = f">= {TARGET_RECALL}" if t in TARGETED else ""
        cells = "".join(f"{methods[n]['per_transform_recall'][t]:>12.2f}" for n in anchors)
        flag = " !" if t in TARGETED and s["accepted"] < TARGET_RECALL else ""
        print(f"{t:<28}{s['n']:>4}{s['reached']:>9.2f}{s['hash_ok']:>9.2f}{s['thumb_ok']:>7.2f}"
              f"{s['accepted']:>8.2f}{flag:<2}{target:>6}{cells}")  # fmt: skip
    kinds = sorted({k for row in result["accepted_by_kind"].values() for k in row})
    print("\nours, accepted by base kind, targeted transforms (a fifth of n per cell: coarse)")
    print(f"{'transform':<28}" + "".join(f"{k[:11]:>12}" for k in kinds))
    for t in sorted(TARGETED):
        row = result["accepted_by_kind"].get(t, {})
        print(f"{t:<28}" + "".join(f"{row[k]:>12.2f}" if k in row else f"{'-':>12}" for k in kinds))
    print("\nhard negatives joined to their base's picture (share of bases)")
    kinds = list(methods["ours"]["per_negative_join_rate"])
    print(f"{'method':<24}" + "".join(f"{k[:13]:>14}" for k in kinds) + f"{'all':>8}")
    for n, m in methods.items():
        if "blocked" in m:
            continue
        print(f"{n:<24}" + "".join(f"{m['per_negative_join_rate'][k]:>14.2f}" for k in kinds)
              + f"{m['negative_join_rate']:>8.3f}")  # fmt: skip
    print(
        f"\n{'method':<24}{'thr':>9}{'best here':>10}{'P':>7}{'R':>7}{'F1':>7}{'copy R':>8}{'neg join':>9}{'s':>7}"
    )
    for n, m in methods.items():
        if "blocked" in m:
            print(f"{n:<24} blocked: {m['blocked']}")
            continue
        print(f"{n:<24}{m['threshold']!s:>9}{m.get('best_here', ''):>10}{m['precision']:>7.3f}{m['recall']:>7.3f}"
              f"{m['f1']:>7.3f}{m['copy_recall']:>8.3f}{m['negative_join_rate']:>9.3f}{m['seconds']:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
