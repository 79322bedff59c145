"""Soak: a 1,000,000-row manifest against a loopback server; memory must stay flat.

    PYTHONPATH=. python bench/soak.py --rows 1000000 --procs 2 --max-seconds 3600

Starts a fast aiohttp server on 127.0.0.1 in its own process (60% a tiny cached JPEG, 20%
404, 20% garbage bytes), writes the manifest, runs the real CLI (`python -m cli run`) and
samples VmRSS of the CLI parent and every descendant (workers, resource tracker) once a
second from /proc. Prints the peak RSS of each process up to 10k, 100k and 1M committed
rows, the ratio of the last window's peak to the first (flat means within ~20%), rows/s,
and checks that every manifest row is in the catalog exactly once.

Bounded: the run is killed after --max-seconds and the partial figures are printed.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MILESTONES = (10_000, 100_000, 1_000_000)


# --- the server (runs in a child process) -----------------------------------------------------


def serve(port_file: Path) -> None:
    from aiohttp import web
    from PIL import Image

    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((48, 32)).convert("RGB").save(buffer, "JPEG", quality=80)
    jpeg = buffer.getvalue()
    garbage = bytes(range(256)) * 8

    async def handle(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.Response(body=jpeg, content_type="image/jpeg")
        if kind == "garbage":
            return web.Response(body=garbage, content_type="image/jpeg")
        return web.Response(status=404, text="not here")

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/{kind}/{n}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        port_file.write_text(str(port))
        await asyncio.Event().wait()

    import asyncio

    asyncio.run(start())


# --- memory sampling from /proc ---------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return 0.0


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
        except OSError:
            continue
    return found


def committed_rows(catalog: Path) -> int:
    if not catalog.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COALESCE(SUM(rows), 0) FROM shards").fetchone()[0]
    except sqlite3.Error:
        return 0


def window_of(rows: int) -> int:
    for m in MILESTONES:
        if rows <= m:
            return m
    return MILESTONES[-1]


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--max-seconds", type=float, default=3600)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    port_file = work / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        port = int(port_file.read_text())
        return soak(args, work, port)
    finally:
        server.terminate()
        server.wait(timeout=10)


def soak(args: argparse.Namespace, work: Path, port: int) -> int:
    manifest, out = work / "manifest.txt", work / "out"
    kinds = ["ok"] * 6 + ["missing"] * 2 + ["garbage"] * 2
    with manifest.open("w") as f:
        for n in range(args.rows):
            f.write(f"http://127.0.0.1:{port}/{kinds[n % 10]}/{n}\n")
    cmd = [sys.executable, "-m", "cli", "run", str(manifest), "--out", str(out), "--procs", str(args.procs),
           "--shard-size", str(args.shard_size), "--allow-private", "--sizes", "64", "--retries", "0", "-q"]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    peaks: dict[int, dict[str, float]] = {m: {} for m in MILESTONES}  # window -> role -> MB
    tree_peak: dict[int, float] = {m: 0.0 for m in MILESTONES}
    worker_roles: dict[int, str] = {}
    printed: set[int] = set()
    rows = 0
    catalog = out / "catalog.sqlite"
    timed_out = False
    try:
        while proc.poll() is None:
            if time.monotonic() - started > args.max_seconds:
                timed_out = True
                break
            rows = committed_rows(catalog)
            window = window_of(rows)
            sample = {"parent": rss_mb(proc.pid) or 0.0}
            for kid in descendants(proc.pid):
                role = worker_roles.setdefault(kid, f"child{len(worker_roles) + 1}(pid {kid})")
                sample[role] = rss_mb(kid) or 0.0
            for role, mb in sample.items():
                peaks[window][role] = max(peaks[window].get(role, 0.0), mb)
            tree_peak[window] = max(tree_peak[window], sum(sample.values()))
            for m in MILESTONES:
                if rows >= m and m not in printed:
                    printed.add(m)
                    report_window(m, peaks[m], tree_peak[m], rows, time.monotonic() - started)
            time.sleep(1.0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    rows = committed_rows(catalog)
    for m in MILESTONES:
        if m not in printed and peaks[m]:
            report_window(m, peaks[m], tree_peak[m], rows, elapsed)
    used = [m for m in MILESTONES if peaks[m]]
    first, last = used[0], used[-1]
    ratio = tree_peak[last] / tree_peak[first] if tree_peak[first] else float("nan")
    print(f"tree peak, last window / first window: {ratio:.2f}  (flat means 0.8-1.2)")
    print(f"tree peak overall: {max(tree_peak.values()):.0f} MB (limit 500 MB)")
    print(f"exit code {proc.returncode}{' (killed: --max-seconds reached)' if timed_out else ''}")
    print(f"{rows:,} rows in {elapsed:,.0f} s = {rows / elapsed:,.0f} rows/s")
    with sqlite3.connect(catalog) as db:
        n, distinct, lo, hi = db.execute("SELECT COUNT(*), COUNT(DISTINCT row), MIN(row), MAX(row) FROM items").fetchone()
        by_status = db.execute("SELECT status, error_class, COUNT(*) FROM items GROUP BY 1, 2").fetchall()
    exactly_once = n == distinct == args.rows and lo == 0 and hi == args.rows - 1
    print(f"catalog: {n:,} items, {distinct:,} distinct rows, rows {lo}..{hi}: "
          f"{'every row exactly once' if exactly_once else 'NOT every row exactly once'}")  # fmt: skip
    print("by status:", ", ".join(f"{s}/{e or '-'}={c:,}" for s, e, c in by_status))
    return 0 if exactly_once and not timed_out else 1


def report_window(m: int, peaks: dict[str, float], tree: float, rows: int, elapsed: float) -> None:
    parts = "  ".join(f"{role}={mb:.0f}MB" for role, mb in peaks.items())
    print(f"[up to {m:>9,} rows] at {rows:,} rows, {elapsed:,.0f} s: peak tree={tree:.0f}MB  {parts}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
