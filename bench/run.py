"""The benchmark driver: ``python -m bench`` (or ``python bench/run.py``); ``--quick`` for a
short run. See bench/README.md.

Every runner is measured in the same session against the same loopback server and the same
URLs, alternating (rep 1 of every runner, then rep 2, ...), and reported as the median of the
repetitions; ratios are taken between medians of the same session.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` as well as `python -m bench`
    sys.path.insert(0, str(ROOT))

from bench.measure import Measured, run_measured, stop_server

I2D_PYTHON = Path(os.environ.get("BENCH_IMG2DATASET_VENV", "/tmp/benchvenv3")) / "bin" / "img2dataset"
WORKLOADS = ("W1", "W2")
LATENCIES = (0, 100)


# -- the server ----------------------------------------------------------------------------


class BenchServer:
    def __init__(self, ports: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server", "--ports", str(ports)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        first = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not first:
            raise SystemExit("bench server did not start")
        self.ports: list[int] = json.loads(first)["ports"]

    def url(self, i: int, latency_ms: int, kind: str = "img") -> str:
        port = self.ports[i % len(self.ports)]
        prefix = f"/lat/{latency_ms}" if latency_ms else ""
        return f"http://127.0.0.1:{port}{prefix}/{kind}/{i}.jpg"

    def cpu_s(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[0]}/stats", timeout=10) as r:
            return float(json.load(r)["cpu_s"])

    def close(self) -> None:
        stop_server(self.proc)


# -- runners: each returns (command, how to count successes) ------------------------------


def _pipeline_cmd(manifest: Path, out: Path, procs: int | None, workload: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(manifest), "--out", str(out), "-q"]
    if procs is not None:
        cmd += ["--procs", str(procs)]
    if workload == "W1":
        cmd.append("--no-thumbnails")
    return cmd + extra


def _pipeline_ok(out: Path) -> int:
    db = sqlite3.connect(out / "catalog.sqlite")
    try:
        return db.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0]
    finally:
        db.close()


def _img2dataset_cmd(manifest: Path, out: Path, workload: str, latency: int, rows: int) -> list[str]:
    # Its best configuration measured here: 2 processes x 16 threads at 0 ms; at 100 ms it
    # needs many more threads in flight (it blocks one thread per request).
    threads = 16 if latency == 0 else 128
    cmd = [
        str(I2D_PYTHON), "--url_list", str(manifest), "--input_format", "csv", "--url_col", "url",
        "--output_format", "files", "--output_folder", str(out), "--processes_count", "2",
        "--thread_count", str(threads), "--number_sample_per_shard", str(max(1, rows // 8)),
        "--compute_hash", "sha256", "--retries", "0", "--timeout", "30", "--enable_wandb", "False",
        "--distributor", "multiprocessing", "--extract_exif", "False",
    ]  # fmt: skip
    if workload == "W1":
        return cmd + ["--resize_mode", "no", "--disable_all_reencoding", "True"]
    return cmd + ["--image_size", "256", "--resize_mode", "keep_ratio_largest", "--encode_quality", "85"]


def _img2dataset_ok(out: Path) -> int:
    return sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))


# -- one measurement -----------------------------------------------------------------------


class Session:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.server = BenchServer(args.ports)
        self.samples: list[dict[str, object]] = []
        help_text = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "run", "--help"], check=False, capture_output=True, text=True, cwd=ROOT
        ).stdout
        # Issue 5 refuses loopback by default; pass its opt-in only where it exists.
        self.pipeline_extra = ["--allow-private"] if "--allow-private" in help_text else []
        self.pipeline_extra += args.pipeline_args.split()
        self.has_i2d = I2D_PYTHON.exists()

    def manifest(self, rows: int, latency: int, kind: str = "img") -> tuple[Path, Path]:
        csv = self.work / f"m_{kind}_{latency}_{rows}.csv"
        txt = csv.with_suffix(".txt")
        if not csv.exists():
            urls = [self.server.url(i, latency, kind) for i in range(rows)]
            csv.write_text("url\n" + "\n".join(urls) + "\n")
            txt.write_text("\n".join(urls) + "\n")
        return csv, txt

    def measure(self, name: str, cmd: list[str], out: Path, count, *, workload: str, latency: int,
                rows: int, rep: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
        shutil.rmtree(out, ignore_errors=True)
        server_before = self.server.cpu_s()
        m: Measured = run_measured(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                      "NO_ALBUMENTATIONS_UPDATE": "1"})
        server_cpu = self.server.cpu_s() - server_before
        result: dict[str, object] = {
            "runner": name, "workload": workload, "latency_ms": latency, "rows": rows, "rep": rep,
            "returncode": m.returncode, "wall_s": round(m.wall_s, 3), "cpu_s": round(m.cpu_s, 3),
            "peak_rss_mb": round(m.peak_rss_mb, 1), "server_cpu_s": round(server_cpu, 3),
        }  # fmt: skip
        if m.returncode != 0:
            result["error"] = (m.stderr or m.stdout)[-800:]
            ok, elapsed = 0, m.wall_s
        else:
            ok, elapsed = count(out, m)
        result.update(ok=ok, elapsed_s=round(elapsed, 3))
        result["images_per_s"] = round(ok / elapsed, 1) if elapsed > 0 else 0.0
        result["cpu_s_per_1000"] = round(m.cpu_s / ok * 1000, 2) if ok else None
        shutil.rmtree(out, ignore_errors=True)
        self.samples.append(result)
        print(f"  {name:<22} {workload} {latency:>3} ms  {result['images_per_s']:>8} img/s  "
              f"cpu/1k {result['cpu_s_per_1000']}  rss {result['peak_rss_mb']} MB  "
              f"server {server_cpu:.2f} cpu-s  ok {ok}/{rows}", flush=True)
        if "error" in result:
            print("    error:", str(result["error"]).strip().splitlines()[-1:], flush=True)
        return result

    def round(self, workload: str, latency: int, rep: int, only: set[str] | None) -> None:
        a = self.args
        rows = a.rows_w1 if workload == "W1" else a.rows_w2
        csv, txt = self.manifest(rows, latency)
        out = self.work / "out"

        def wall_count(path: Path, m: Measured, fn=None) -> tuple[int, float]:  # type: ignore[no-untyped-def]
            return fn(path), m.wall_s

        def json_count(path: Path, m: Measured) -> tuple[int, float]:
            data = json.loads(m.stdout.strip().splitlines()[-1])
            return int(data["images"]), float(data["elapsed_s"])

        def want(name: str) -> bool:
            return only is None or any(name.startswith(o) for o in only)

        for procs in a.procs:
            name = f"pipeline --procs {procs}"
            if want("pipeline"):
                self.measure(name, _pipeline_cmd(csv, out, procs, workload, self.pipeline_extra), out,
                             lambda p, m: (_pipeline_ok(p), m.wall_s), workload=workload, latency=latency,
                             rows=rows, rep=rep)  # fmt: skip
        for mode in ("sequential", "threads", "asyncio"):
            if want("seed"):
                cmd = [sys.executable, "-m", "bench.seeds", mode, workload, str(txt), str(out),
                       "--seconds", str(a.seed_seconds)]  # fmt: skip
                self.measure(f"seed {mode}", cmd, out, lambda p, m: (json.loads(m.stdout.splitlines()[-1])["images"], m.wall_s),
                             workload=workload, latency=latency, rows=rows, rep=rep)  # fmt: skip
        if want("img2dataset") and self.has_i2d:
            i2d_rows = rows if latency == 0 else min(rows, a.rows_i2d_latency)
            i2d_csv, _ = self.manifest(i2d_rows, latency)
            self.measure("img2dataset 1.47", _img2dataset_cmd(i2d_csv, out, workload, latency, i2d_rows), out,
                         lambda p, m: (_img2dataset_ok(p), m.wall_s), workload=workload, latency=latency,
                         rows=i2d_rows, rep=rep)  # fmt: skip
        if want("ceiling") and latency == 0:
            # From memory: every body is held at once, so a few thousand are plenty.
            cmd = [sys.executable, "-m", "bench.ceiling", workload, str(min(rows, 3000)), str(out)]
            self.measure("ceiling (CPU only)", cmd, out, json_count, workload=workload, latency=latency,
                         rows=min(rows, 3000), rep=rep)  # fmt: skip


# -- extras ------------------------------------------------------------------------------


def thumbnail_psnr() -> dict[str, object]:
    """Mean PSNR of our 256 px thumbnails vs full decode + exif_transpose + LANCZOS.

    ``resize``: our pixels (draft decode + BICUBIC chain, written losslessly as PNG), i.e.
    what the fast recipe costs in quality. ``as_written``: the default q85 JPEG file, which
    adds JPEG's own loss (the same for any resizer; see ``reference_q85`` for that floor:
    the reference itself through the same q85 encode).
    """
    import numpy as np
    from PIL import Image, ImageOps

    from bench.images import load_pool
    from pipeline.config import ProcessOptions
    from pipeline.image.process import process_image
    from pipeline.store.local import Store

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        return 10 * np.log10(255.0**2 / mse) if mse else 99.0

    found: dict[str, list[float]] = {"resize": [], "as_written": [], "reference_q85": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        for data in load_pool():
            full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            ref = None
            for key, fmt in (("resize", "png"), ("as_written", "jpeg")):
                info = process_image(data, options=ProcessOptions(keep_originals=False, thumb_format=fmt), store=store)
                thumb = info.thumbnails[0]
                ours = np.asarray(Image.open(Path(tmp) / thumb.path).convert("RGB"))
                if ref is None:
                    ref_im = full.resize((thumb.width, thumb.height), Image.Resampling.LANCZOS)
                    ref = np.asarray(ref_im)
                    buf = io.BytesIO()
                    ref_im.save(buf, "JPEG", quality=85)
                    found["reference_q85"].append(psnr(np.asarray(Image.open(buf).convert("RGB")), ref))
                found[key].append(psnr(ours, ref))
    return {k: {"mean_db": round(float(np.mean(v)), 2), "min_db": round(float(np.min(v)), 2)} for k, v in found.items()} | {
        "images": len(found["resize"])
    }


def startup(session: Session, reps: int) -> dict[str, object]:
    csv, _ = session.manifest(10, 0)
    out = session.work / "startup"
    walls = []
    for _ in range(reps):
        shutil.rmtree(out, ignore_errors=True)
        m = run_measured(_pipeline_cmd(csv, out, None, "W2", session.pipeline_extra), cwd=ROOT)
        assert m.returncode == 0, m.stderr
        assert _pipeline_ok(out) == 10
        walls.append(m.wall_s)
    shutil.rmtree(out, ignore_errors=True)
    return {"rows": 10, "walls_s": [round(w, 3) for w in walls], "median_s": round(statistics.median(walls), 3)}


def memory_flat(session: Session, sizes: tuple[int, ...]) -> list[dict[str, object]]:
    """Peak RSS of the tree, W2 defaults --procs 2, tiny images: only the row count varies."""
    results = []
    out = session.work / "mem"
    for rows in sizes:
        csv, _ = session.manifest(rows, 0, kind="tiny")
        shutil.rmtree(out, ignore_errors=True)
        m = run_measured(_pipeline_cmd(csv, out, 2, "W2", session.pipeline_extra), cwd=ROOT)
        ok = _pipeline_ok(out) if m.returncode == 0 else 0
        results.append({"rows": rows, "ok": ok, "peak_rss_mb": round(m.peak_rss_mb, 1), "wall_s": round(m.wall_s, 2)})
        print(f"  memory: {rows:,} rows -> peak tree RSS {m.peak_rss_mb:.0f} MB ({m.wall_s:.1f} s, ok {ok})", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return results


def machine() -> dict[str, object]:
    import aiohttp
    import PIL

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(), "pillow": PIL.__version__,
        "aiohttp": aiohttp.__version__, "uvloop": uv, "loadavg_at_start": os.getloadavg(),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, cwd=ROOT).stdout.strip(),
    }  # fmt: skip


# -- the table -----------------------------------------------------------------------------


def summarise(samples: list[dict[str, object]]) -> list[dict[str, object]]:
    groups: dict[tuple[str, int, str], list[dict[str, object]]] = {}
    for s in samples:
        groups.setdefault((str(s["workload"]), int(s["latency_ms"]), str(s["runner"])), []).append(s)
    rows = []
    for (workload, latency, runner), ss in groups.items():
        rates = [float(s["images_per_s"]) for s in ss]
        cpus = [float(s["cpu_s_per_1000"]) for s in ss if s["cpu_s_per_1000"] is not None]
        rows.append({
            "workload": workload, "latency_ms": latency, "runner": runner,
            "images_per_s": round(statistics.median(rates), 1), "all_images_per_s": rates,
            "cpu_s_per_1000": round(statistics.median(cpus), 2) if cpus else None,
            "peak_rss_mb": round(max(float(s["peak_rss_mb"]) for s in ss), 0),
            "server_cpu_share": round(statistics.median(float(s["server_cpu_s"]) / max(float(s["wall_s"]), 1e-9) for s in ss), 3),
            "failed_runs": sum(1 for s in ss if s["returncode"] != 0),
        })  # fmt: skip
    for r in rows:
        same = [x for x in rows if x["workload"] == r["workload"] and x["latency_ms"] == r["latency_ms"]]
        i2d = next((x for x in same if x["runner"].startswith("img2dataset")), None)
        ceil = next((x for x in rows if x["workload"] == r["workload"] and x["runner"].startswith("ceiling")), None)
        r["x_img2dataset"] = round(r["images_per_s"] / i2d["images_per_s"], 2) if i2d and i2d["images_per_s"] else None
        r["x_ceiling"] = round(r["images_per_s"] / ceil["images_per_s"], 2) if ceil and ceil["images_per_s"] else None
    order = {"pipeline": 0, "seed": 1, "img2dataset": 2, "ceiling": 3}
    rows.sort(key=lambda r: (r["workload"], r["latency_ms"], order.get(str(r["runner"]).split()[0], 9), r["runner"]))
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| workload | latency | runner | images/s | CPU-s / 1,000 | peak RSS (tree) | × img2dataset | × ceiling |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        def f(v: object) -> str:
            return "–" if v is None else f"{v:,}" if isinstance(v, (int, float)) else str(v)
        lines.append(
            f"| {r['workload']} | {r['latency_ms']} ms | {r['runner']} | {f(r['images_per_s'])} | {f(r['cpu_s_per_1000'])} "
            f"| {f(int(r['peak_rss_mb']))} MB | {f(r['x_img2dataset'])} | {f(r['x_ceiling'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, fewer rows (~4 min)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every runner [3; quick 1]")
    parser.add_argument("--only", default=None, help="comma-separated runner prefixes: pipeline,seed,img2dataset,ceiling")
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--latencies", default="0,100")
    parser.add_argument("--procs", default="1,2,4")
    # 64: --per-host 8 holds per machine, so 64 ports allow --procs 2 the 512 requests in
    # flight that 32 ports did when it held per process (W1 at 100 ms needs ~400).
    parser.add_argument("--ports", type=int, default=64)
    parser.add_argument("--pipeline-args", default="", help="extra options for every `pipeline run` (experiments)")
    parser.add_argument("--work-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                        help="where outputs go (default /dev/shm: the disk of a shared machine is the noisiest part)")
    parser.add_argument("--no-extras", action="store_true", help="skip PSNR, start-up and memory checks")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.procs = [int(p) for p in args.procs.split(",")]
    args.rows_w1 = 8000 if args.quick else 12000
    args.rows_w2 = 1500 if args.quick else 2000
    args.rows_i2d_latency = 2000 if args.quick else 3000
    args.seed_seconds = 4.0 if args.quick else 6.0
    only = set(args.only.split(",")) if args.only else None
    started = time.time()
    report: dict[str, object] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                                 "machine": machine(), "argv": sys.argv[1:]}  # fmt: skip
    from bench.images import describe, load_pool

    report["pool"] = describe(load_pool())
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-", dir=args.work_dir) as tmp:
        session = Session(args, Path(tmp))
        report["img2dataset"] = str(I2D_PYTHON) if session.has_i2d else f"blocked: {I2D_PYTHON} not found"
        try:
            for rep in range(args.reps):
                for workload in args.workloads.split(","):
                    for latency in (int(x) for x in args.latencies.split(",")):
                        print(f"rep {rep + 1}/{args.reps}  {workload} {latency} ms", flush=True)
                        session.round(workload, latency, rep, only)
            if not args.no_extras:
                report["startup"] = startup(session, 3)
                print(f"  start-up, 10 rows: {report['startup']}", flush=True)
                report["memory"] = memory_flat(session, (10_000, 50_000) if args.quick else (10_000, 200_000))
                report["psnr"] = thumbnail_psnr()
                print(f"  PSNR vs full decode + LANCZOS: {report['psnr']}", flush=True)
        finally:
            session.server.close()
    report["samples"] = session.samples
    report["summary"] = rows = summarise(session.samples)
    report["elapsed_s"] = round(time.time() - started, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime(started))
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print()
    print(table(rows))
    print(f"\nresults: {path}  ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
