"""What ``fetch_url`` costs in client CPU per request, next to a bare aiohttp GET.

``python -m bench.fetch_overhead [--requests 5000] [--reps 3] [--route img|tiny]`` starts the
loopback server (``bench/server.py``, its own process, 127.0.0.1 only), then in this one
process, on one asyncio loop and one session made by ``pipeline.net.session.make_session`` (the
worker's session: guarded resolver and socket factory, trace hooks, 8 connections per port),
runs the same requests with 64 in flight, alternating:

  bare       ``async with session.get(url) as resp: await resp.read()``
  fetch_url  ``pipeline.net.fetch.fetch_url(session, url, options)``
  plain      as bare, on a plain ``aiohttp.ClientSession`` (default connector and timeouts,
             no trace hooks, same connection limits): what the seed script pays
  table      as fetch_url, on a session made while a machine-wide host table
             (``pipeline.net.hostlimit``) was installed in this process, as in a pool worker:
             every request takes and gives back a slot of its host (``--rate R``: and
             reserves its start under a rate cap of R per host; keep R above the rate
             reached, so that only the bookkeeping is measured, not waiting)

URLs are spread over 32 ports, so 64 in flight never queue for a pool slot. It prints the
CPU-ms per request of this process (``time.process_time``: the server and other jobs on a
shared machine do not count) and requests/s for each run, the medians, the ratios fetch_url
/ bare and fetch_url / plain and the difference table - fetch_url measured in this same run. Each run is bounded by ``--requests`` and
``--max-seconds``. ``--only fetch_url`` runs one way only (for py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import aiohttp

from pipeline.config import FetchOptions
from pipeline.net import hostlimit
from pipeline.net.fetch import fetch_url
from pipeline.net.hosttable import HostTable
from pipeline.net.session import make_session

IN_FLIGHT = 64
WAYS = ("bare", "fetch_url", "plain", "table")


def _start_server(ports: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.server", "--ports", str(ports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("bench.server did not start")
    return proc, json.loads(line)["ports"]


async def _bare(session: aiohttp.ClientSession, url: str, _options: FetchOptions) -> bool:
    async with session.get(url) as resp:
        body = await resp.read()
    return resp.status == 200 and bool(body)


async def _pipeline(session: aiohttp.ClientSession, url: str, options: FetchOptions) -> bool:
    result = await fetch_url(session, url, options)
    return result.error_class is None and bool(result.body)


RUNNERS: dict[str, Callable[[aiohttp.ClientSession, str, FetchOptions], Awaitable[bool]]] = {
    "bare": _bare,
    "fetch_url": _pipeline,
    "plain": _bare,
    "table": _pipeline,
}


async def _run(
    way: str, session: aiohttp.ClientSession, urls: list[str], options: FetchOptions, max_seconds: float
) -> tuple[float, int, int]:
    """(CPU seconds, requests done, failures) for one pass over ``urls``."""
    runner = RUNNERS[way]
    queue = iter(urls)
    stop_at = time.monotonic() + max_seconds
    done = failed = 0

    async def lane() -> None:
        nonlocal done, failed
        for url in queue:  # shared iterator: each URL is taken by one lane
            if time.monotonic() > stop_at:
                return
            ok = await runner(session, url, options)
            done += 1
            failed += not ok

    cpu = time.process_time()
    async with asyncio.timeout(max_seconds + 60):  # a lane stuck in one request ends too
        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return time.process_time() - cpu, done, failed


async def _main(
    args: argparse.Namespace, ports: list[int]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    options = FetchOptions(allow_private=True, retries=0, per_host_rate=args.rate)
    ways = [args.only] if args.only else list(WAYS)
    per_request: dict[str, list[float]] = {way: [] for way in ways}
    per_second: dict[str, list[float]] = {way: [] for way in ways}
    connector = aiohttp.TCPConnector(limit=options.concurrency, limit_per_host=options.per_host)
    session = make_session(replace(options, per_host_rate=None))  # no table: per process
    table = HostTable.create(1)
    try:
        assert table.handle is not None
        hostlimit.install(table.handle)  # what a pool worker's initializer does
        with_table = make_session(options)  # picks up the installed table
        async with session, with_table, aiohttp.ClientSession(connector=connector) as plain:
            sessions = {"bare": session, "fetch_url": session, "plain": plain, "table": with_table}
            await _passes(args, ports, ways, sessions, options, per_request, per_second)
    finally:
        hostlimit.uninstall()
        table.destroy()
    return per_request, per_second


async def _passes(
    args: argparse.Namespace,
    ports: list[int],
    ways: list[str],
    sessions: dict[str, aiohttp.ClientSession],
    options: FetchOptions,
    per_request: dict[str, list[float]],
    per_second: dict[str, list[float]],
) -> None:
    warm = [f"http://127.0.0.1:{p}/{args.route}/{i}.jpg" for i, p in enumerate(ports * 16)]
    for s in {id(s): s for s in sessions.values()}.values():
        await _run("bare", s, warm, options, args.max_seconds)  # open the connections
    base = 0
    for rep in range(args.reps):
        order = ways if rep % 2 == 0 else ways[::-1]
        for way in order:
            urls = [
                f"http://127.0.0.1:{ports[i % len(ports)]}/{args.route}/{base + i}.jpg"
                for i in range(args.requests)
            ]
            base += args.requests
            started = time.perf_counter()
            cpu, done, failed = await _run(way, sessions[way], urls, options, args.max_seconds)
            wall = time.perf_counter() - started
            if failed or not done:
                raise SystemExit(f"{way}: {failed} of {done} requests failed")
            per_request[way].append(cpu / done * 1000.0)
            per_second[way].append(done / wall)
            print(
                f"rep {rep} {way:>9}: {done} requests, {cpu / done * 1000.0:.4f} CPU-ms each,"
                f" {done / wall:,.0f}/s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--route", choices=("img", "tiny"), default="img")
    parser.add_argument("--ports", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per run")
    parser.add_argument("--only", choices=WAYS, help="run one way only (for py-spy)")
    parser.add_argument("--rate", type=float, default=None, help="per-host rate cap of the table way")
    args = parser.parse_args()
    server, ports = _start_server(args.ports)
    try:
        per_request, per_second = asyncio.run(_main(args, ports))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    medians = {way: statistics.median(v) for way, v in per_request.items()}
    summary = {
        "route": args.route,
        "requests": args.requests,
        "reps": args.reps,
        "cpu_ms_per_request_median": {k: round(v, 4) for k, v in medians.items()},
        "requests_per_s_median": {k: round(statistics.median(v)) for k, v in per_second.items()},
    }
    if "table" in medians and "fetch_url" in medians:
        summary["extra_cpu_ms_table_vs_fetch_url"] = round(medians["table"] - medians["fetch_url"], 4)
    if "fetch_url" in medians:
        for base in ("bare", "plain"):
            if base in medians:
                summary[f"ratio_fetch_url_to_{base}"] = round(medians["fetch_url"] / medians[base], 3)
                summary[f"extra_cpu_ms_vs_{base}"] = round(medians["fetch_url"] - medians[base], 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
