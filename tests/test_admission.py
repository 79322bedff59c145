"""Admission: how many downloads a worker starts, and when it holds back for the CPU."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.admission import Admission

pytestmark = pytest.mark.timeout(30)


async def _started(task: asyncio.Task[None]) -> bool:
    for _ in range(5):  # a few loop turns: enough for a woken waiter to run
        await asyncio.sleep(0)
    return task.done()


def test_no_download_starts_while_the_cpu_backlog_is_full() -> None:
    async def scenario() -> None:
        a = Admission(ceiling=100, backlog_limit=2, start=100)
        for _ in range(2):
            await a.start_download()
            a.download_done(has_body=True)
        assert (a.in_flight, a.backlog) == (0, 2)
        blocked = asyncio.create_task(a.start_download())
        assert not await _started(blocked)
        a.processed()
        assert await _started(blocked)
        assert (a.in_flight, a.backlog) == (1, 1)

    asyncio.run(scenario())


def test_failed_downloads_hold_no_backlog() -> None:
    async def scenario() -> None:
        a = Admission(ceiling=4, backlog_limit=1, start=4)
        for _ in range(10):
            await a.start_download()
            a.download_done(has_body=False)
        assert (a.in_flight, a.backlog) == (0, 0)

    asyncio.run(scenario())


def test_cap_grows_only_while_it_binds_and_never_past_the_ceiling() -> None:
    async def scenario() -> None:
        a = Admission(ceiling=6, backlog_limit=100, start=2)
        for _ in range(2):
            await a.start_download()
        third = asyncio.create_task(a.start_download())
        assert not await _started(third)  # the cap (2) binds
        a.download_done(has_body=False)  # completed while at the cap: 2 -> 3
        assert a.cap == 3 and await _started(third)
        while a.in_flight:
            a.download_done(has_body=False)
        grown = a.cap
        await a.start_download()  # one in flight, far below the cap
        a.download_done(has_body=False)
        assert a.cap == grown
        for _ in range(20):  # saturate repeatedly
            for _ in range(a.cap):
                await a.start_download()
            while a.in_flight:
                a.download_done(has_body=False)
        assert a.cap == 6

    asyncio.run(scenario())


def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    async def scenario() -> None:
        a = Admission(ceiling=1, backlog_limit=10, start=1)
        await a.start_download()
        first = asyncio.create_task(a.start_download())
        second = asyncio.create_task(a.start_download())
        assert not await _started(first) and not await _started(second)
        a.download_done(has_body=False)  # wakes `first`...
        first.cancel()  # ...which is cancelled before it runs
        assert await _started(second)
        assert a.in_flight == 1

    asyncio.run(scenario())
