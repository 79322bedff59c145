"""What WebDataset/Parquet shards cost: ``python -m bench.dataset`` (bench/README.md, "Dataset outputs").

W2 of the main bench (``bench/run.py``: download from the loopback bench server at 0 ms,
decode, 256 px thumbnail, dHash/pHash, original kept) at ``--procs 2``, the same manifest,
run alternately with ``--output-format files`` (today's default) and each format of
``--formats``, the order rotated every repetition, each run under ``flock /tmp/bench.lock``
so no other benchmark overlaps it. images/s = ok rows / wall time of the whole command
(start-up included); a run counts only if every row is ok and, for a dataset, its shards
hold every ok row once (``_stats.json``). Reported: each run, the medians, and each
format's median over files'. Results: ``bench/results/dataset-<UTC>.json``.

``--pack-reps N`` also times the packing alone, the part a dataset adds, which whole-run
throughput on a shared machine measures poorly: one files run, then ``DatasetWriter`` packs
its 2,000 ok rows (thumbnail + original read back, written into tar shards on the same
folder) N times in this process, CPU time per sample (tables emptied between repetitions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import run_measured
from bench.run import ROOT, BenchServer, _pipeline_cmd, _pipeline_ok
from bench.s3 import bench_lock


def run_once(fmt: str, args: argparse.Namespace, manifest: Path, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--allow-private", "--output-format", fmt, "--samples-per-shard", str(args.samples_per_shard)]
    cmd = _pipeline_cmd(manifest, out, args.procs, "W2", extra + args.pipeline_args.split())
    with bench_lock(args.lock):
        m = run_measured(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    ok = _pipeline_ok(out) if m.returncode == 0 else 0
    result: dict[str, Any] = {
        "format": fmt, "exit": m.returncode, "wall_s": round(m.wall_s, 3), "ok": ok,
        "images_per_s": round(ok / m.wall_s, 1), "cpu_ms_per_image": round(m.cpu_s / max(ok, 1) * 1000, 3),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
    }  # fmt: skip
    result["valid"] = m.returncode == 0 and ok == args.rows
    if fmt != "files" and result["valid"]:
        stats = json.loads((out / "dataset" / "_stats.json").read_text())
        result["shards"] = len(stats["shards"])
        result["valid"] = stats["samples"] == ok
    if m.returncode != 0:
        result["error"] = (m.stderr or m.stdout)[-400:]
    shutil.rmtree(out, ignore_errors=True)
    return result


def pack_cost(fmt: str, args: argparse.Namespace, manifest: Path, out: Path) -> list[float]:
    """CPU ms per sample of packing a finished files run's ok rows, ``args.pack_reps`` times."""
    from pipeline.catalog import Catalog
    from pipeline.dataset.writer import DatasetWriter
    from pipeline.runner import build_config

    shutil.rmtree(out, ignore_errors=True)
    cmd = _pipeline_cmd(manifest, out, args.procs, "W2", ["--allow-private", *args.pipeline_args.split()])
    with bench_lock(args.lock):
        assert run_measured(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode == 0
    keep = "--no-keep-originals" not in args.pipeline_args
    config = build_config(out, output_format=fmt, samples_per_shard=args.samples_per_shard, keep_originals=keep)
    costs = []
    for _ in range(args.pack_reps):
        with Catalog(out / "catalog.sqlite") as catalog, bench_lock(args.lock):
            catalog.db.executescript("DROP TABLE IF EXISTS dataset_samples; DROP TABLE IF EXISTS dataset_parts;")
            shutil.rmtree(out / "dataset", ignore_errors=True)
            started = time.process_time()
            writer = DatasetWriter(catalog, config, out)  # packs every ok row not yet in a shard
            writer.finish()
            spent = time.process_time() - started
            samples = catalog.db.execute("SELECT COUNT(*) FROM dataset_samples").fetchone()[0]
        costs.append(round(spent / samples * 1000, 3))
        print(json.dumps({"pack": fmt, "samples": samples, "cpu_ms_per_sample": costs[-1]}), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return costs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="W2 rows (the main bench's) [%(default)s]")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--reps", type=int, default=5, help="repetitions of each format, alternating [%(default)s]")
    p.add_argument("--formats", default="webdataset", help="compared with files: some of webdataset,parquet")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="[%(default)s]: a few shards per run")
    p.add_argument("--pipeline-args", default="", help="extra options for every run")
    p.add_argument("--pack-reps", type=int, default=0, help="also time the packing alone, this many times")
    p.add_argument("--work-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    p.add_argument("--lock", type=lambda v: Path(v) if v else None, default=Path("/tmp/bench.lock"),
                   help="flock around each timed run ('': none, for CPU-time-only measurements)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    formats = ["files", *[f for f in args.formats.split(",") if f]]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = Path(tempfile.mkdtemp(prefix="pipeline-dataset-bench-", dir=args.work_dir))
    server = BenchServer(64)
    runs: list[dict[str, Any]] = []
    try:
        manifest = work / "w2.csv"
        manifest.write_text("url\n" + "".join(f"{server.url(i, 0)}\n" for i in range(args.rows)))
        for rep in range(args.reps):
            shift = rep % len(formats)
            for fmt in formats[shift:] + formats[:shift]:
                result = {"rep": rep + 1, **run_once(fmt, args, manifest, work / "out")}
                runs.append(result)
                print(json.dumps(result), flush=True)
        packing = {fmt: pack_cost(fmt, args, manifest, work / "out") for fmt in formats[1:] if args.pack_reps}
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {}
    for fmt in formats:
        rates = [r["images_per_s"] for r in runs if r["format"] == fmt and r["valid"]]
        cpu = [r["cpu_ms_per_image"] for r in runs if r["format"] == fmt and r["valid"]]
        summary[fmt] = {
            "median_images_per_s": statistics.median(rates) if rates else None,
            "median_cpu_ms_per_image": statistics.median(cpu) if cpu else None,
            "runs": rates,
        }
    base = summary["files"]["median_images_per_s"]
    for fmt in formats[1:]:
        rate = summary[fmt]["median_images_per_s"]
        if base and rate:
            summary[fmt]["throughput_vs_files"] = round(rate / base, 3)
    for fmt, costs in packing.items():
        summary[fmt]["median_pack_cpu_ms_per_sample"] = statistics.median(costs)
    report = {"when": stamp, "options": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"dataset-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(r["valid"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
