"""Admission: how many downloads a worker starts, and when it holds back for the CPU."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.net.admission import Admission

pytestmark = pytest.mark.timeout(30)


async def _parked(a: Admission, task: asyncio.Task[None], waiting: int) -> bool:
    """Whether ``task`` is held back: it ran until it parked as a waiter (``a.waiting`` has
    reached ``waiting``), or it finished, i.e. was not held back."""
    while not task.done() and a.waiting < waiting:
        await asyncio.sleep(0)  # let the task run to its first wait, however many turns it takes
    return not task.done()


async def _started(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` (woken, or never held back) took its download; awaits it (the bound
    only turns a regression into a failure instead of a hang)."""
    await asyncio.wait_for(task, 10)
    return True


def test_no_download_starts_while_the_cpu_backlog_is_full() -> None:
    async def scenario() -> None:
        a = Admission(ceiling=100, backlog_limit=2, start=100)
        for _ in range(2):
            await a.start_download()
            a.download_done(has_body=True)
        assert (a.in_flight, a.backlog) == (0, 2)
        blocked = asyncio.create_task(a.start_download())
        assert await _parked(a, blocked, 1)
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
        assert await _parked(a, third, 1)  # the cap (2) binds
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
        assert await _parked(a, first, 1)
        second = asyncio.create_task(a.start_download())
        assert await _parked(a, second, 2)
        a.download_done(has_body=False)  # wakes `first`...
        first.cancel()  # ...which is cancelled before it runs
        assert await _started(second)
        assert a.in_flight == 1

    asyncio.run(scenario())


def test_a_download_sleeping_between_attempts_leaves_its_slot_to_another() -> None:
    async def scenario() -> None:
        a = Admission(ceiling=1, backlog_limit=10, start=1)
        await a.start_download()
        sleeper = asyncio.create_task(a.sleep_outside(0.0))  # e.g. a Retry-After wait
        other = asyncio.create_task(a.start_download())
        assert await _started(other)  # took the slot while the first one slept
        assert await _parked(a, sleeper, 1)  # ...which now waits in line to go on
        a.download_done(has_body=False)
        assert await _started(sleeper)
        assert a.in_flight == 1

    asyncio.run(scenario())


def _settle(a: Admission, *, fetch_s: float, cpu_s: float, rounds: int = 400) -> None:
    """Feed ``rounds`` downloads that took ``fetch_s`` and bodies that took ``cpu_s``."""

    async def scenario() -> None:
        for _ in range(rounds):
            await a.start_download()
            a.download_done(has_body=True, seconds=fetch_s)
            a.processed(cpu_s)

    asyncio.run(scenario())


def test_the_backlog_grows_to_cover_a_round_trip_of_cheap_bodies() -> None:
    # W1 at 100 ms: ~0.7 ms a body, so 32 bodies last 22 ms of a 100 ms round trip.
    a = Admission(ceiling=256, backlog_limit=32, start=64)
    _settle(a, fetch_s=0.100, cpu_s=0.0007)
    assert a.backlog_limit == 215  # 1.5 round trips of bodies: ceil(1.5 * 0.1 / 0.0007)
    _settle(a, fetch_s=0.100, cpu_s=0.0001)
    assert a.backlog_limit == 256  # never past --concurrency


def test_the_backlog_stays_at_its_floor_when_bodies_are_expensive_or_latency_is_low() -> None:
    a = Admission(ceiling=256, backlog_limit=32, start=64)
    _settle(a, fetch_s=0.100, cpu_s=0.0045)  # W2 at 100 ms: 1.5 round trips = 34 bodies
    assert a.backlog_limit == 34
    _settle(a, fetch_s=0.002, cpu_s=0.0007)  # loopback at 0 ms: no latency to hide
    assert a.backlog_limit == 32
    two = Admission(ceiling=256, backlog_limit=64, start=128, threads=2)
    _settle(two, fetch_s=0.100, cpu_s=0.0045)  # two threads get through twice the bodies
    assert two.backlog_limit == 67


def test_failed_downloads_do_not_stretch_the_round_trip() -> None:
    a = Admission(ceiling=256, backlog_limit=32, start=64)
    _settle(a, fetch_s=0.100, cpu_s=0.0045)

    async def timeouts() -> None:
        for _ in range(200):  # e.g. 30 s timeouts: no body arrived, nothing to cover
            await a.start_download()
            a.download_done(has_body=False, seconds=30.0)

    asyncio.run(timeouts())
    _settle(a, fetch_s=0.100, cpu_s=0.0045, rounds=1)  # the next body retargets the limit
    assert a.backlog_limit == 34  # as before the timeouts; counted, 30 s would give 256


def test_bodies_waiting_for_the_cpu_are_bounded_in_bytes_too() -> None:
    """32 bodies may wait, but not 32 bodies of 8 MB when the byte budget is 24 MB."""

    async def main() -> tuple[int, int]:
        limit = Admission(256, 32, start=64, max_backlog_bytes=24 * 2**20)
        for _ in range(3):
            await limit.start_download()
            limit.download_done(has_body=True, seconds=0.1, size=8 * 2**20)
        blocked = asyncio.ensure_future(limit.start_download())
        was_blocked = await _parked(limit, blocked, 1)
        limit.processed(0.01, 8 * 2**20)  # one body leaves the CPU stage: room again
        await asyncio.wait_for(blocked, 1)
        return was_blocked, limit.backlog_bytes

    was_blocked, held = asyncio.run(main())
    assert was_blocked and held == 16 * 2**20
