"""The web-like crawl benchmark: ``python -m bench.web`` (see bench/README.md, "Web-like crawl").

**What is served.** ``bench/webcorpus.py`` plans 5,000 URLs (``--rows``) over 150 hosts
``127.0.1.1``...``127.0.1.150`` with Zipf(1) sizes (894, 447, 298... URLs; median host 12),
80% of rows on HTTPS hosts whose certificate (IP SANs) comes from a local CA that clients
trust through ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE``; a quarter of hosts cap every
connection at 1-4 MB/s. Every URL has its own photograph (``bench/photos.py``, seeded by the
row): JPEG 50%, progressive JPEG 15%, PNG 10%, PNG with alpha 5%, WebP 12%, AVIF 4%, GIF
4%, median 0.74 MP, encoded once into ``/tmp/pipeline-web-corpus/v<VERSION>-s<seed>/``.
``bench/webserver.py`` serves them from one asyncio process, each answer after a lognormal
time to first byte (median 50 ms, sigma 1, capped at 1.3 s; fixed per row and attempt so
every runner meets the same delays). Faults (``--no-faults`` removes them all): 3% 404, 1%
500, 1% 503 on the first request then the image, 0.5% accept and never answer, 0.5% send
half the body then RST, 1% redirect (302 to the same host's image), 1% HTML served as
``image/jpeg``, and two hosts answering 10% of their URLs' first request with 429 +
``Retry-After: 1``. The "good" URLs are those a careful client can fetch: plain, 503-then-
200, redirect and 429-first rows (94% of rows with faults, all without).

**What is run.** Per repetition (``--reps``, default 3), every runner in turn on the same
manifest (alternating, so drift on the shared machine hits all alike), each in a fresh
output folder on /dev/shm, each under ``flock /tmp/bench.lock`` (``fcntl.flock``, the same
lock as flock(1)) so no other benchmark overlaps a timed run; the server's per-row state is
reset between runs. ``pipeline``: the CLI of ``--tree`` (default: this repository) as a
subprocess, ``run --procs 2 --allow-private`` and otherwise defaults. ``img2dataset``: 1.47
from its own venv (``/tmp/benchvenv3``), 2 processes x 32 threads, 256 px
``keep_ratio_largest``, its default timeout (10 s) and retries (0), shards of rows/10.
``pipeline-ray``: as ``pipeline`` with ``--executor ray`` (local Ray; optional).

**How it is scored.** Every row against the plan. Per run: good images/s = good URLs that
ended ok / wall time of the whole command (start-up included); t95 = seconds from launch
until 95% of the *good URLs* had ended ok (null if never reached), and t95_own the same for
95% of the good rows *this runner* got; tail = wall time minus the moment the last good row
ended ok; CPU-ms per good image = CPU of the whole process tree (``RUSAGE_CHILDREN``) / good
ok images; peak RSS = the tree's RSS summed, sampled every 50 ms (``bench/measure.py``);
per-format share of good URLs ok; a confusion table of planned kind -> observed class (ok or
pipeline's error class; img2dataset's error messages mapped onto those classes by
``i2d_class``); completions of good rows per 5 s and per 1 s bin from launch. Completion
times: pipeline's catalog ``items.updated_at`` (its commit time: a row counts when it is
durable, which is when a resumed run would not redo it); img2dataset's per-sample output file
mtime (``--output_format files`` writes each image as it finishes; it has no other per-sample
clock). The server's own CPU seconds per run are reported too (it shares the 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import Measured, run_measured, stop_server
from bench.webcorpus import (
    EXPECTED,
    FORMAT_MIX,
    Plan,
    corpus_dir,
    ensure_certs,
    ensure_corpus,
    make_plan,
    missing_rows,
    url,
)  # fmt: skip

I2D_VENV = Path(os.environ.get("BENCH_IMG2DATASET_VENV", "/tmp/benchvenv3"))
LOCK = Path("/tmp/bench.lock")
RUNNERS = ("pipeline", "img2dataset", "pipeline-ray")


# -- the server ----------------------------------------------------------------------------


class Server:
    """``bench/webserver.py`` as a child; commands over its stdin, answers on its stdout."""

    def __init__(self, seed: int, rows: int, hosts: int, faults: bool, certs_dir: Path) -> None:
        cmd = [sys.executable, "-m", "bench.webserver", "--seed", str(seed), "--rows", str(rows),
               "--hosts", str(hosts), "--certs-dir", str(certs_dir)] + ([] if faults else ["--no-faults"])  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        first = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not first:
            raise SystemExit("web server did not start")
        self.ports: dict[str, int] = json.loads(first)["ports"]

    def command(self, what: str) -> dict[str, object]:
        self.proc.stdin.write(what + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def close(self) -> None:
        stop_server(self.proc)


# -- runners -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ended:
    """How one row ended for a runner: ok or an error class, and when (epoch seconds)."""

    ok: bool
    error_class: str | None
    done_at: float | None
    detail: str | None = None  # the runner's own message (img2dataset), for the JSON


def pipeline_cmd(tree: Path, manifest: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(tree / "cli.py"), "run", str(manifest), "--out", str(out), "-q",
            "--procs", "2", *extra]  # fmt: skip


def pipeline_ended(out: Path) -> dict[str, Ended]:
    db = sqlite3.connect(f"file:{out / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT url, status, error_class, error_message, updated_at FROM items").fetchall()
    finally:
        db.close()
    return {
        u: Ended(
            status == "ok",
            None if status == "ok" else (cls or status),
            at,
            None if status == "ok" else (msg or "")[:120],
        )
        for u, status, cls, msg, at in rows
    }


def i2d_cmd(manifest: Path, out: Path, rows: int) -> list[str]:
    # As bench/run.py runs it at 256 px, but 32 threads and its own timeout/retries defaults.
    return [
        str(I2D_VENV / "bin" / "img2dataset"), "--url_list", str(manifest), "--input_format", "csv",
        "--url_col", "url", "--output_format", "files", "--output_folder", str(out),
        "--processes_count", "2", "--thread_count", "32", "--number_sample_per_shard", str(max(1, rows // 10)),
        "--compute_hash", "sha256", "--enable_wandb", "False", "--distributor", "multiprocessing",
        "--extract_exif", "False", "--image_size", "256", "--resize_mode", "keep_ratio_largest",
        "--encode_quality", "85",
    ]  # fmt: skip


def i2d_class(message: str | None) -> str:
    """img2dataset's error message -> the nearest of pipeline's error classes (for the table)."""
    m = (message or "").lower()
    for needle, cls in (("http error 4", "http_4xx"), ("http error 5", "http_5xx"), ("timed out", "timeout"),
                        ("timeout", "timeout"), ("certificate", "tls"), ("incompleteread", "truncated"),
                        ("connection reset", "truncated"), ("remote end closed", "connect"),
                        ("connection refused", "connect"), ("cannot identify", "not_image"),
                        ("image decoding failed", "decode_error"), ("truncated", "truncated")):  # fmt: skip
        if needle in m:
            return cls
    return "other"


def i2d_ended(out: Path) -> dict[str, Ended]:
    import pyarrow.parquet as pq

    ended: dict[str, Ended] = {}
    for part in sorted(out.glob("*.parquet")):
        table = pq.read_table(part, columns=["key", "url", "status", "error_message"]).to_pylist()
        for rec in table:
            if rec["status"] == "success":
                # files format: OUT/<shard>/<key>.jpg, written when the sample finished.
                image = out / part.stem / f"{rec['key']}.jpg"
                ended[rec["url"]] = Ended(True, None, image.stat().st_mtime if image.exists() else None)
            else:
                msg = rec["error_message"]
                cls = i2d_class(msg) if rec["status"] == "failed_to_download" else "decode_error"
                ended[rec["url"]] = Ended(False, cls, None, (msg or "")[:120])
    return ended


# -- scoring -------------------------------------------------------------------------------


def timeline(times: list[float], width: float, until: float) -> list[int]:
    bins = [0] * max(1, math.ceil(until / width))
    for t in times:
        bins[min(len(bins) - 1, max(0, int(t // width)))] += 1
    return bins


def score(
    plan: Plan, urls: list[str], ended: dict[str, Ended], started: float, m: Measured
) -> dict[str, object]:
    good = [r for r in plan.rows if r.good]
    done: list[float] = []
    by_fmt: dict[str, list[int]] = {f: [0, 0] for f in FORMAT_MIX}
    confusion: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    details: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    right = faults = undated = 0
    for row in plan.rows:
        e = ended.get(urls[row.row])
        seen = "missing" if e is None else "ok" if e.ok else str(e.error_class)
        confusion[row.kind][seen] += 1
        if e is not None and e.detail:  # faults, and good rows that failed (e.g. a refused format)
            details[row.kind][e.detail] += 1
        if row.good:
            by_fmt[row.fmt][1] += 1
            if e is not None and e.ok:
                by_fmt[row.fmt][0] += 1
                if e.done_at is None:
                    undated += 1
                else:
                    done.append(e.done_at - started)
        else:
            faults += 1
            right += int(seen in EXPECTED[row.kind])
    done.sort()
    ok = len(done) + undated

    def at_share(share: float, of: int) -> float | None:
        need = math.ceil(share * of)
        return round(done[need - 1], 2) if 0 < need <= len(done) else None

    last = done[-1] if done else None
    return {
        "good_urls": len(good), "good_ok": ok, "good_ok_share": round(ok / max(1, len(good)), 4),
        "images_per_s": round(ok / m.wall_s, 2), "wall_s": round(m.wall_s, 2),
        "t95_s": at_share(0.95, len(good)), "t95_own_s": at_share(0.95, ok),
        "last_good_s": round(last, 2) if last is not None else None,
        "tail_s": round(m.wall_s - last, 2) if last is not None else None,
        "cpu_s": round(m.cpu_s, 2), "cpu_ms_per_image": round(m.cpu_s * 1000 / ok, 2) if ok else None,
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "format_ok_share": {f: round(a / b, 4) if b else None for f, (a, b) in by_fmt.items()},
        "faults": faults, "faults_right_class": right,
        "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
        "fault_messages": {k: dict(v.most_common(4)) for k, v in details.items()},
        "undated_ok": undated,
        "timeline_5s": timeline(done, 5.0, m.wall_s), "timeline_1s": timeline(done, 1.0, m.wall_s),
    }  # fmt: skip


# -- the session ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Runner:
    name: str
    cmd: Callable[[Path, Path], list[str]]  # (manifest, out) -> argv
    ended: Callable[[Path], dict[str, Ended]]
    cwd: Path
    env: dict[str, str]


HOLD_LOCK = (
    True  # False with --no-lock: the caller already holds it (`flock /tmp/bench.lock python -m bench.web`)
)


def locked(fn: Callable[[], Measured]) -> Measured:
    """Run ``fn`` holding /tmp/bench.lock (flock(2), as flock(1) takes it): timed runs never overlap."""
    if not HOLD_LOCK:
        return fn()
    with open(LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("    (waiting for /tmp/bench.lock)", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            return fn()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_runners(names: list[str], tree: Path, ca: Path, rows: int, extra: list[str]) -> list[Runner]:
    env = {
        **os.environ,
        "SSL_CERT_FILE": str(ca),
        "REQUESTS_CA_BUNDLE": str(ca),
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    pipe_env = {**env, "PYTHONPATH": str(tree)}  # workers inherit it: they run --tree's code too
    help_text = subprocess.run([sys.executable, str(tree / "cli.py"), "run", "--help"], check=False, capture_output=True,
                               text=True, cwd=tree, env=pipe_env).stdout  # fmt: skip
    # Loopback is refused by pipeline's SSRF guard unless --allow-private (where it exists).
    base = (["--allow-private"] if "--allow-private" in help_text else []) + extra
    out: list[Runner] = []
    for name in names:
        if name == "pipeline":
            out.append(
                Runner(name, lambda mf, o: pipeline_cmd(tree, mf, o, base), pipeline_ended, tree, pipe_env)
            )
        elif name == "pipeline-ray":
            out.append(Runner(name, lambda mf, o: pipeline_cmd(tree, mf, o, base + ["--executor", "ray"]),
                              pipeline_ended, tree, pipe_env))  # fmt: skip
        elif name == "img2dataset":
            if not (I2D_VENV / "bin" / "img2dataset").exists():
                print(f"img2dataset skipped: {I2D_VENV}/bin/img2dataset not found", flush=True)
                continue
            i2d_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            out.append(Runner(name, lambda mf, o: i2d_cmd(mf, o, rows), i2d_ended, ROOT, i2d_env))
        else:
            raise SystemExit(f"unknown runner {name!r}: use {', '.join(RUNNERS)}")
    return out


def run_once(runner: Runner, server: Server, plan: Plan, urls: list[str], manifest: Path, work: Path,
             rep: int, timeout: float) -> dict[str, object]:  # fmt: skip
    out = work / f"out-{runner.name}"
    shutil.rmtree(out, ignore_errors=True)
    server.command("reset")
    before = float(server.command("stats")["cpu_s"])  # type: ignore[arg-type]
    cmd = runner.cmd(manifest, out)

    def timed() -> tuple[float, Measured]:
        started = time.time()  # epoch: the catalog and file mtimes are epoch too
        return started, run_measured(cmd, env=runner.env, cwd=runner.cwd, timeout=timeout)

    started, m = locked(timed)  # type: ignore[arg-type]
    stats = server.command("stats")
    result: dict[str, object] = {"runner": runner.name, "rep": rep, "returncode": m.returncode,
                                 "server_cpu_s": round(float(stats["cpu_s"]) - before, 2),  # type: ignore[arg-type]
                                 "server_requests": stats["requests"], "server_statuses": stats["statuses"]}  # fmt: skip
    try:
        result |= score(plan, urls, runner.ended(out), started, m)
    except Exception as exc:  # noqa: BLE001 - a broken run is a result, not a crash of the session
        result |= {"wall_s": round(m.wall_s, 2), "error": f"scoring failed: {exc!r}"}
    if m.returncode not in (0, 3):  # 3 = done, failure rate above --max-failure-rate
        result["error"] = (m.stderr or m.stdout)[-1500:]
    shutil.rmtree(out, ignore_errors=True)
    return result


def print_run(r: dict[str, object]) -> None:
    print(f"  {r['runner']:<12} rep {r['rep']}: {r.get('images_per_s')} good img/s  wall {r.get('wall_s')} s  "
          f"t95 {r.get('t95_s')} s (own {r.get('t95_own_s')})  tail {r.get('tail_s')} s  "
          f"cpu {r.get('cpu_ms_per_image')} ms/img  rss {r.get('peak_rss_mb')} MB  "
          f"ok {r.get('good_ok')}/{r.get('good_urls')}  faults right {r.get('faults_right_class')}/{r.get('faults')}  "
          f"server {r['server_cpu_s']} cpu-s", flush=True)  # fmt: skip
    if "timeline_5s" in r:
        print("    per 5 s:", " ".join(map(str, r["timeline_5s"])), flush=True)  # type: ignore[arg-type]
    if r.get("error"):
        print("    error:", str(r["error"]).strip().splitlines()[-1:], flush=True)


# -- the summary ---------------------------------------------------------------------------

FIGURES = ("images_per_s", "t95_s", "t95_own_s", "tail_s", "cpu_ms_per_image", "peak_rss_mb", "good_ok_share",
           "wall_s", "server_cpu_s")  # fmt: skip


def summarise(samples: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    by: dict[str, list[dict[str, object]]] = collections.defaultdict(list)
    for s in samples:
        by[str(s["runner"])].append(s)
    summary: dict[str, dict[str, object]] = {}
    for name, runs in by.items():
        row: dict[str, object] = {"runs": len(runs)}
        for f in FIGURES:
            vals = [float(r[f]) for r in runs if r.get(f) is not None]  # type: ignore[arg-type]
            row[f] = round(statistics.median(vals), 4 if f == "good_ok_share" else 2) if vals else None
            row[f + "_range"] = [min(vals), max(vals)] if vals else None
        fmts = [r["format_ok_share"] for r in runs if "format_ok_share" in r]
        row["format_ok_share"] = {f: statistics.median(float(x[f]) for x in fmts if x[f] is not None)
                                  for f in FORMAT_MIX} if fmts else None  # type: ignore[index]  # fmt: skip
        row["faults_right_class"] = [r.get("faults_right_class") for r in runs]
        summary[name] = row
    ref = summary.get("img2dataset")
    if ref:
        for name, row in summary.items():
            row["x_img2dataset"] = {f: round(float(row[f]) / float(ref[f]), 2) if row[f] and ref[f] else None
                                    for f in ("images_per_s", "t95_s", "cpu_ms_per_image", "peak_rss_mb")}  # fmt: skip
    return summary


def summary_table(summary: dict[str, dict[str, object]]) -> str:
    def f(v: object) -> str:
        return "–" if v is None else f"{v:,}" if isinstance(v, (int, float)) else str(v)

    def rng(v: object) -> str:
        return "–" if not v else f"{f(v[0])}–{f(v[1])}"  # type: ignore[index]

    lines = ["| runner | good img/s | t95 (s) | tail (s) | CPU-ms / img | peak RSS (MB) | good ok | × i2d img/s | × i2d t95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in summary.items():
        x = r.get("x_img2dataset") or {}
        lines.append(
            f"| {name} | {f(r['images_per_s'])} ({rng(r['images_per_s_range'])}) | {f(r['t95_s'])} ({rng(r['t95_s_range'])}) "
            f"| {f(r['tail_s'])} | {f(r['cpu_ms_per_image'])} | {f(r['peak_rss_mb'])} ({rng(r['peak_rss_mb_range'])}) "
            f"| {f(round(100 * float(r['good_ok_share'] or 0), 1))}% | {f(x.get('images_per_s'))} | {f(x.get('t95_s'))} |"
        )  # type: ignore[union-attr]
    return "\n".join(lines)


def confusion_table(run: dict[str, object]) -> str:
    conf: dict[str, dict[str, int]] = run.get("confusion", {})  # type: ignore[assignment]
    cols = sorted({c for v in conf.values() for c in v}, key=lambda c: (c != "ok", c))
    lines = ["| planned | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for kind, counts in conf.items():
        lines.append(f"| {kind} | " + " | ".join(str(counts.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def machine_info(tree: Path) -> dict[str, object]:
    from bench.run import machine

    info = machine()
    info["tree"] = str(tree)
    info["tree_git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                                      cwd=tree).stdout.strip()  # fmt: skip
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--hosts", type=int, default=150)
    p.add_argument("--seed", type=int, default=1, help="picks the corpus and the plan")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--runners", default="pipeline,img2dataset", help=f"comma-separated: {', '.join(RUNNERS)}")
    p.add_argument("--no-faults", action="store_true", help="no 404/500/503/hang/reset/redirect/HTML/429")
    p.add_argument(
        "--tree", type=Path, default=ROOT, help="the pipeline checkout to measure (default: this one)"
    )
    p.add_argument("--pipeline-args", default="", help="extra options for every `pipeline run`")
    p.add_argument("--run-timeout", type=float, default=900.0, help="kill a run after this many seconds")
    p.add_argument("--work-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--no-lock",
        action="store_true",
        help="do not take /tmp/bench.lock per run: only when the whole session runs under flock(1)",
    )
    args = p.parse_args(argv)
    global HOLD_LOCK
    HOLD_LOCK = not args.no_lock
    tree = args.tree.resolve()
    started = time.time()
    plan = make_plan(args.seed, args.rows, args.hosts, faults=not args.no_faults)
    # Encoding thousands of photos loads both cores: hold the lock so no timed run sees it.
    if missing_rows(args.seed, range(args.rows)):
        locked(lambda: ensure_corpus(args.seed, range(args.rows)))  # type: ignore[arg-type,return-value]
    certs = ensure_certs(corpus_dir(args.seed) / "tls", len(plan.hosts))
    report: dict[str, object] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                                 "argv": sys.argv[1:], "machine": machine_info(tree), "rows": args.rows,
                                 "hosts": len(plan.hosts), "seed": args.seed, "faults": not args.no_faults,
                                 "plan_kinds": dict(collections.Counter(r.kind for r in plan.rows)),
                                 "plan_formats": dict(collections.Counter(r.fmt for r in plan.rows))}  # fmt: skip
    samples: list[dict[str, object]] = []
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / time.strftime("web-%Y%m%dT%H%M%SZ.json", time.gmtime(started))

    def save() -> dict[str, dict[str, object]]:
        # After every run, so a session stopped half-way still leaves its runs on disk.
        report["samples"] = samples
        report["summary"] = summary = summarise(samples)
        report["elapsed_s"] = round(time.time() - started, 1)
        path.write_text(json.dumps(report, indent=1, default=str) + "\n")
        return summary

    server = Server(args.seed, args.rows, args.hosts, not args.no_faults, certs.ca.parent)
    try:
        urls = [url(plan, server.ports, row) for row in plan.rows]
        with tempfile.TemporaryDirectory(prefix="pipeline-web-", dir=args.work_dir) as tmp:
            work = Path(tmp)
            manifest = work / "web.csv"
            manifest.write_text("url\n" + "\n".join(urls) + "\n")
            runners = make_runners(
                args.runners.split(","), tree, certs.ca, args.rows, args.pipeline_args.split()
            )
            for rep in range(args.reps):
                print(f"rep {rep + 1}/{args.reps}", flush=True)
                for runner in runners:
                    result = run_once(runner, server, plan, urls, manifest, work, rep, args.run_timeout)
                    samples.append(result)
                    save()
                    print_run(result)
    finally:
        server.close()
    summary = save()
    print()
    print(summary_table(summary))
    for name in summary:
        first = next(s for s in samples if s["runner"] == name)
        print(f"\n{name}, rep 0: formats ok {first.get('format_ok_share')}")
        print(confusion_table(first))
        print("  per 1 s:", " ".join(map(str, first.get("timeline_1s", []))))  # type: ignore[arg-type]
    print(f"\nresults: {path}  ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
