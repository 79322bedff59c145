"""The body budget: at most ``--body-budget`` bytes of bodies held per process, from first byte to release."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

__all__ = ["BodyLease", "body_lease"]


class _BodyBudget:
    """Bytes of the bodies read through one session (one per process) and not yet given
    back, at most ``limit``.

    A body takes its bytes before it keeps them: an announced length all at once, else chunk
    by chunk as they arrive. Waiters are served in order, and the body that has held bytes
    longest never waits, so bodies that each hold part of the budget cannot wait for each
    other forever, and a body larger than the whole budget comes in when it is alone. So at
    most ``limit`` plus one body (``--max-bytes``) are held. Loop thread only.
    """

    __slots__ = ("_holders", "_queue", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._holders: dict[BodyLease, None] = {}  # leases holding bytes, oldest first
        self._queue: deque[BodyLease] = deque()  # leases waiting, first come first served

    def lease(self) -> BodyLease:
        return BodyLease(self)

    def _may(self, lease: BodyLease, n: int, *, first: bool) -> bool:
        if next(iter(self._holders), None) is lease:
            return True  # the oldest holder: it must finish for anyone else to go on
        return first and (self.used + n <= self.limit or not self._holders)

    def _grant(self, lease: BodyLease, n: int) -> None:
        self.used += n
        lease.held += n
        self._holders.setdefault(lease)

    def _wake_all(self) -> None:
        for lease in self._queue:
            if lease.woken is not None and not lease.woken.done():
                lease.woken.set_result(None)


class BodyLease:
    """One body's share of its session's budget (``body_lease``); ``close`` gives it all back.

    Hand one to ``fetch_url`` to keep the body's bytes counted after it returns (until
    ``close``); a failed attempt gives its bytes back at once.
    """

    __slots__ = ("_budget", "held", "woken")

    def __init__(self, budget: _BodyBudget) -> None:
        self._budget = budget
        self.held = 0
        self.woken: asyncio.Future[None] | None = None

    def try_take(self, n: int) -> bool:
        budget = self._budget
        if n > 0 and not budget._may(self, n, first=not budget._queue):
            return False
        if n > 0:
            budget._grant(self, n)
        return True

    async def take(self, n: int) -> None:
        budget = self._budget
        budget._queue.append(self)
        try:
            while True:
                self.woken = asyncio.get_running_loop().create_future()
                await self.woken
                if budget._may(self, n, first=budget._queue[0] is self):
                    break
            budget._grant(self, n)
        finally:
            self.woken = None
            budget._queue.remove(self)
            budget._wake_all()  # the next in line may fit too (or this one gave up)

    def close(self) -> None:
        budget = self._budget
        if self.held:
            budget.used -= self.held
            self.held = 0
            budget._holders.pop(self, None)
            budget._wake_all()


_BUDGETS: weakref.WeakKeyDictionary[aiohttp.ClientSession, _BodyBudget] = weakref.WeakKeyDictionary()
_UNBOUNDED = 2**62  # the budget of a session not made by make_session


def body_lease(session: aiohttp.ClientSession) -> BodyLease:
    """A lease on ``session``'s body budget, holding nothing yet."""
    budget = _BUDGETS.get(session)
    if budget is None:
        budget = _BUDGETS[session] = _BodyBudget(_UNBOUNDED)
    return budget.lease()
