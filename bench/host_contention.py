"""What waiting for a host slot costs when two worker processes compete for one host.

``python -m bench.host_contention [--requests 3000] [--reps 3] [--latency 20] [--lanes 64]
[--route tiny|img]``
starts the loopback server (``bench/server.py``) on ONE port, so every request goes to one
host, then runs two worker processes, as the local executor does (spawned, initialised by
``pipeline.worker.protocol.init_worker``), each with one session and ``--lanes`` requests wanting to
be in flight (``fetch_url``, ``/lat/MS/tiny/N.jpg``: a 16x16 JPEG, so that the network
stage's own CPU is small next to what is measured), alternating two ways of allowing the
host 8 requests at once:

  table        the machine-wide host table, ``--per-host 8``: up to 124 of the 128 lanes
               wait for a slot, woken when one is given back (``pipeline.net.hostlimit``)
  per-process  no table, ``--per-host 4`` in each process: aiohttp's own per-host queue

Both let the host see 8 requests at once, so requests/s should match; the difference in
CPU per request (both processes, ``time.process_time``) is what the table's waiting costs.
Prints each run, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from bench.fetch_overhead import _start_server
from pipeline.config import FetchOptions
from pipeline.net.hosttable import HostTable
from pipeline.worker.protocol import init_worker

WAYS = {"table": 8, "per-process": 4}  # --per-host of each way


def _lanes(urls: list[str], per_host: int, lanes: int) -> tuple[float, int, int]:
    """In a worker: (CPU seconds, requests done, failures) for ``urls`` over ``lanes`` lanes."""
    from pipeline.net.fetch import fetch_url
    from pipeline.net.session import make_session

    options = FetchOptions(allow_private=True, retries=0, per_host=per_host)

    async def run() -> tuple[int, int]:
        done = failed = 0
        queue = iter(urls)
        async with make_session(options) as session:

            async def lane() -> None:
                nonlocal done, failed
                for url in queue:
                    result = await fetch_url(session, url, options)
                    done += 1
                    failed += result.error_class is not None

            await asyncio.gather(*(lane() for _ in range(lanes)))
        return done, failed

    cpu = time.process_time()
    done, failed = asyncio.run(run())
    return time.process_time() - cpu, done, failed


def _one_run(way: str, urls: list[str], lanes: int) -> tuple[float, float]:
    """(requests/s, CPU-ms per request of both workers) for one way."""
    table = HostTable.create(2) if way == "table" else None
    handle = table.handle if table is not None else None
    try:
        with ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker, initargs=(handle,)
        ) as pool:
            list(pool.map(_lanes, [urls[:4], urls[4:8]], [WAYS[way]] * 2, [2, 2]))  # start both
            halves = [urls[8::2], urls[9::2]]
            started = time.perf_counter()
            results = list(pool.map(_lanes, halves, [WAYS[way]] * 2, [lanes] * 2))
            wall = time.perf_counter() - started
    finally:
        if table is not None:
            table.destroy()
    cpu = sum(r[0] for r in results)
    done = sum(r[1] for r in results)
    failed = sum(r[2] for r in results)
    if failed or not done:
        raise SystemExit(f"{way}: {failed} of {done} requests failed")
    return done / wall, cpu / done * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per run, both workers together")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=int, default=20, help="server latency, ms")
    parser.add_argument("--lanes", type=int, default=64, help="requests wanting to be in flight, per worker")
    parser.add_argument("--route", choices=("tiny", "img"), default="tiny")
    args = parser.parse_args()
    server, ports = _start_server(1)
    rates: dict[str, list[float]] = {way: [] for way in WAYS}
    cpus: dict[str, list[float]] = {way: [] for way in WAYS}
    base = 0
    try:
        for rep in range(args.reps):
            for way in WAYS if rep % 2 == 0 else list(WAYS)[::-1]:
                urls = [
                    f"http://127.0.0.1:{ports[0]}/lat/{args.latency}/{args.route}/{base + i}.jpg"
                    for i in range(args.requests + 8)
                ]
                base += len(urls)
                rate, cpu = _one_run(way, urls, args.lanes)
                rates[way].append(rate)
                cpus[way].append(cpu)
                print(f"rep {rep} {way:>11}: {rate:,.0f} requests/s, {cpu:.4f} CPU-ms each", flush=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    summary = {
        "latency_ms": args.latency,
        "route": args.route,
        "requests": args.requests,
        "reps": args.reps,
        "requests_per_s_median": {way: round(statistics.median(v), 1) for way, v in rates.items()},
        "cpu_ms_per_request_median": {way: round(statistics.median(v), 4) for way, v in cpus.items()},
    }
    summary["extra_cpu_ms_table"] = round(
        summary["cpu_ms_per_request_median"]["table"] - summary["cpu_ms_per_request_median"]["per-process"], 4
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
