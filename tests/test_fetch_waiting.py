"""Waiting is not working: a URL that sleeps (retry backoff, Retry-After, a host's cool-down)
holds no download slot meanwhile, and the cool-down of a host reached by a redirect holds
the later requests that will reach it.

Real servers on 127.0.0.1 (tests/rawserver.py); the run-level test uses a real worker process.
What is asserted is what the servers saw, in order; nothing is timed.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import jpeg
from rawserver import RawServer, Request, response

from pipeline import run
from pipeline.config import FetchOptions
from pipeline.net import hostlimit
from pipeline.net.fetch import fetch_url
from pipeline.net.hosttable import HostTable
from pipeline.net.session import make_session

pytestmark = pytest.mark.timeout(90)

JPEG = jpeg(64, 48, seed=11)
HOLD_S = 8.0  # how long a held request waits for the proof, at most (a bound, under --read-timeout)


def _jpeg(writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, JPEG, headers={"Content-Type": "image/jpeg"}))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spawned workers")
def test_rows_waiting_for_retry_after_leave_their_slots_to_another_host(tmp_path: Path) -> None:
    """--concurrency 4, 8 rows of a host that answers 429 + Retry-After first, then 4 rows of
    a healthy host. The retries of the 429 rows are answered only once the healthy host has
    served all its rows: possible only if the waiting rows let the healthy ones start."""
    busy_rows, healthy_rows = 8, 4
    healthy_served = [0]
    seen: list[bool] = []
    asked: dict[str, int] = {}

    async def healthy(request: Request, writer: asyncio.StreamWriter) -> None:
        _jpeg(writer)
        await writer.drain()
        healthy_served[0] += 1

    async def busy(request: Request, writer: asyncio.StreamWriter) -> None:
        n = request.query["n"][0]
        asked[n] = asked.get(n, 0) + 1
        if asked[n] == 1:
            writer.write(response(429, headers={"Retry-After": "1"}))
            return
        deadline = time.monotonic() + HOLD_S
        while healthy_served[0] < healthy_rows and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        seen.append(healthy_served[0] == healthy_rows)
        _jpeg(writer)

    with RawServer({"/busy": busy}) as b, RawServer({"/img": healthy}) as h:
        manifest = tmp_path / "m.txt"
        urls = [f"{b.url('/busy')}?n={i}" for i in range(busy_rows)]
        urls += [f"{h.url('/img')}?n={i}" for i in range(healthy_rows)]
        manifest.write_text("\n".join(urls) + "\n")
        summary = run(manifest, out=tmp_path / "out", procs=1, concurrency=4, allow_private=True)
    assert summary.by_status == {"ok": busy_rows + healthy_rows}
    assert len(seen) == busy_rows and all(seen), seen  # every retry came after the healthy rows


def test_the_cool_down_of_a_host_reached_by_redirect_holds_later_requests_to_it() -> None:
    """redirector → CDN; the CDN answers the first request 429 + Retry-After: 1. Later URLs of
    the redirector must not reach the CDN before they have waited for its cool-down."""
    cdn_state = {"first": True}

    async def cdn_image(request: Request, writer: asyncio.StreamWriter) -> None:
        if cdn_state["first"]:
            cdn_state["first"] = False
            writer.write(response(429, headers={"Retry-After": "1"}))
        else:
            _jpeg(writer)

    with RawServer({"/img": cdn_image}) as cdn, RawServer({}) as redirector:

        async def to_cdn(request: Request, writer: asyncio.StreamWriter) -> None:
            n = request.query["n"][0]
            writer.write(response(302, headers={"Location": f"{cdn.url('/img')}?n={n}"}))

        redirector.routes["/r"] = to_cdn
        options = FetchOptions(retries=2, backoff_base=0.0, timeout=10.0, allow_private=True)
        cdn_requests_when_waiting: list[int] = []

        async def recording_sleep(seconds: float) -> None:
            cdn_requests_when_waiting.append(len(cdn.requests("/img")))
            await asyncio.sleep(seconds)

        async def main() -> tuple[object, list[object]]:
            async with make_session(options) as session:
                first = await fetch_url(session, f"{redirector.url('/r')}?n=0", replace(options, retries=0))
                later = [
                    fetch_url(session, f"{redirector.url('/r')}?n={n}", options, sleep=recording_sleep)
                    for n in range(1, 5)
                ]
                return first, list(await asyncio.gather(*later))

        first, later = asyncio.run(main())
        cdn_seen = cdn.requests("/img")
    assert first.http_status == 429 and first.final_url.startswith(cdn.url("/img"))
    assert [r.error_class for r in later] == [None] * 4
    assert [r.attempts for r in later] == [1] * 4  # waiting for a cool-down is not an attempt
    # Each later URL waited before its hop to the CDN, and none had reached it before then.
    assert cdn_requests_when_waiting == [1] * 4
    assert len(cdn_seen) == 5


@pytest.fixture
def machine_table() -> Iterator[HostTable]:
    """This test process as a worker of a host table (what the pool initializer does)."""
    table = HostTable.create(1)
    hostlimit.install(table.handle)
    try:
        yield table
    finally:
        hostlimit.uninstall()
        table.destroy()


def test_a_url_sleeping_between_attempts_holds_no_host_slot(machine_table: HostTable) -> None:
    """--per-host 1: /flaky answers 503 once; while it sleeps before its retry, /other on the
    same host gets the host's only slot (the sleep ends when /other has been served)."""
    other_served, flaky_asked = threading.Event(), threading.Event()
    state = {"flaky": 0}

    async def flaky(request: Request, writer: asyncio.StreamWriter) -> None:
        state["flaky"] += 1
        writer.write(response(503) if state["flaky"] == 1 else response(200, JPEG))
        flaky_asked.set()

    async def other(request: Request, writer: asyncio.StreamWriter) -> None:
        _jpeg(writer)
        await writer.drain()
        other_served.set()

    seen: list[bool] = []

    async def sleep_until_other_served(seconds: float) -> None:
        seen.append(await asyncio.get_running_loop().run_in_executor(None, other_served.wait, HOLD_S))

    options = FetchOptions(per_host=1, retries=1, timeout=30.0, allow_private=True)
    with RawServer({"/flaky": flaky, "/other": other}) as srv:

        async def main() -> list[object]:
            async with make_session(options) as session:
                first = asyncio.ensure_future(
                    fetch_url(session, srv.url("/flaky"), options, sleep=sleep_until_other_served)
                )
                # /other starts once /flaky has been answered: it needs the slot /flaky had.
                await asyncio.get_running_loop().run_in_executor(None, flaky_asked.wait, HOLD_S)
                return list(await asyncio.gather(first, fetch_url(session, srv.url("/other"), options)))

        results = asyncio.run(main())
    assert seen == [True]  # /other was served while /flaky waited for its retry
    assert [r.error_class for r in results] == [None, None] and results[0].attempts == 2
