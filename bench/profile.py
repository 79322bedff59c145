"""Profile one ``pipeline run`` against the bench server with py-spy (all processes).

``python -m bench.profile W2 0 2500 [-- extra pipeline options]`` writes
``bench/results/profile-<workload>-<latency>.txt``: the self-time of the hottest frames,
summed over the parent and every worker (py-spy ``--format raw`` collapsed stacks), and the
share of samples per leaf "area" (decode, resize, aiohttp, sqlite, idle...).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import ROOT, BenchServer, _pipeline_cmd


def main() -> None:
    argv = sys.argv[1:]
    # The bench server is on loopback, which the SSRF guard refuses unless told otherwise.
    extra = ["--allow-private", *(argv[argv.index("--") + 1 :] if "--" in argv else [])]
    argv = argv[: argv.index("--")] if "--" in argv else argv
    workload, latency, rows = argv[0], int(argv[1]), int(argv[2])
    server = BenchServer(32)
    work = Path(tempfile.mkdtemp(prefix="pipeline-prof-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        manifest = work / "m.csv"
        manifest.write_text("url\n" + "\n".join(server.url(i, latency) for i in range(rows)) + "\n")
        raw = work / "stacks.txt"
        cmd = ["py-spy", "record", "--subprocesses", "--rate", "200", "--format", "raw",
               "-o", str(raw), "--", *_pipeline_cmd(manifest, work / "out", 2, workload, extra)]  # fmt: skip
        subprocess.run([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), *cmd[1:]],
                       check=True, cwd=ROOT, capture_output=True)  # fmt: skip
        text = summarise(raw.read_text().splitlines())
        out = ROOT / "bench" / "results" / f"profile-{workload}-{latency}ms.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"pipeline {' '.join(extra)} --procs 2, {workload}, {latency} ms, {rows} rows\n" + text)
        print(text)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


AREAS = (
    ("decode (libjpeg)", ("load (PIL/ImageFile", "decode")),
    ("resize", ("resize (PIL/Image.py",)),
    ("encode thumbnail", ("save (PIL/Image.py",)),
    ("sha256 + process glue", ("process_image (pipeline/image/process.py",)),
    ("store writes", ("pipeline/store/",)),
    ("dhash/phash", ("dhash (", "phash (")),
    ("aiohttp / fetch", ("aiohttp/", "pipeline/net/")),
    ("loop wake-ups from the CPU threads", ("_write_to_self", "_read_from_self")),
    ("asyncio loop", ("asyncio/", "uvloop")),
    ("sqlite / catalog", ("pipeline/catalog.py", "sqlite3")),
    ("pickling / hand-off", ("multiprocessing/", "concurrent/futures/process.py", "pickle")),
    ("imports / start-up", ("<frozen importlib", "_find_and_load")),
)


def _area(frames: list[str]) -> str:
    """The area of the frame nearest the leaf that belongs to one (self time goes there)."""
    for frame in reversed(frames):
        for area, needles in AREAS:
            if any(needle in frame for needle in needles):
                return area
    return "other"


def summarise(lines: list[str]) -> str:
    leaves: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        leaf = frames[-1]
        if any(w in leaf for w in ("wait (threading", "select (selectors", "_worker (concurrent", "poll", "acquire", "epoll")) or "idle" in leaf:
            idle += n
            continue
        total += n
        leaves[leaf] += n
        areas[_area(frames)] += n
    out = [f"busy samples: {total} (idle/waiting samples left out: {idle})", "", "share of busy samples by area:"]
    out += [f"  {100 * n / max(total, 1):5.1f}%  {area}" for area, n in areas.most_common()]
    out += ["", "hottest leaf frames (self time):"]
    out += [f"  {100 * n / max(total, 1):5.1f}%  {leaf}" for leaf, n in leaves.most_common(25)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
