"""The aiohttp session: its connector and guarded resolver, timeouts, and the hooks run for every hop."""

from __future__ import annotations

import asyncio
import errno
import socket
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

import aiohttp
import aiohttp.abc
from yarl import URL

from pipeline.config import FetchOptions
from pipeline.net import hostlimit
from pipeline.net.budget import _BUDGETS, _BodyBudget
from pipeline.net.errors import _CoolingDown, _RedirectRefused
from pipeline.net.guard import AddressPolicy, _Blocked, _Guard
from pipeline.net.retry import _COOL_DOWN_SLACK_S, _Cooldowns

if TYPE_CHECKING:
    from pipeline.net.outcome import _Reached

__all__ = ["make_session"]

# Kept per session, beside aiohttp's own state: the hosts cooling down (read by fetch_url).
_COOLDOWNS: weakref.WeakKeyDictionary[aiohttp.ClientSession, _Cooldowns] = weakref.WeakKeyDictionary()
# The host table's gate a session's requests go through, when there is one (make_session).
_GATES: weakref.WeakKeyDictionary[aiohttp.ClientSession, hostlimit.HostGate] = weakref.WeakKeyDictionary()


def make_session(options: FetchOptions) -> aiohttp.ClientSession:
    """A worker makes one per process and options; call it inside the running loop that will use it."""
    # Without a machine-wide table (Ray, a test's own session) the connector's limit_per_host
    # is the per-host limit, as before, and a rate cap holds per process.
    gate = hostlimit.current_gate() or (hostlimit.private_gate() if options.per_host_rate else None)
    guard = _Guard(AddressPolicy(options.allow_private, frozenset(options.allow_hosts)))
    connector = aiohttp.TCPConnector(
        limit=options.concurrency,
        limit_per_host=options.per_host,
        ttl_dns_cache=300,
        resolver=_GuardedResolver(guard),
        socket_factory=guard.socket_factory,
    )
    # total=None: aiohttp's `total`/`connect` also count the wait for a pool slot, so a host
    # capped at `per_host` connections would time out its own queue. The per-attempt deadline
    # is enforced in `fetch._attempt` with asyncio.timeout, paused while queued (see `_trace_config`).
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # identity + no auto-decompression: the body we count against max_bytes is the body we
        # keep, so a small gzip "bomb" can never inflate into gigabytes in the worker.
        headers={"User-Agent": options.user_agent, "Accept-Encoding": "identity"},
        auto_decompress=False,
        # Image hosts have no business setting state across unrelated URLs; a real jar would
        # also grow without bound over a long shard.
        cookie_jar=aiohttp.DummyCookieJar(),
        trace_configs=[_trace_config(hosts=gate is not None)],
    )
    _COOLDOWNS[session] = _Cooldowns()
    _BUDGETS[session] = _BodyBudget(options.body_budget)
    if gate is not None:
        _GATES[session] = gate
    return session


def _trace_config(*, hosts: bool) -> aiohttp.TraceConfig:
    """Stop the attempt deadline while a request waits for a free connection slot; with
    ``hosts``, hold a slot of the host table for every hop.

    Without this, with per_host=8 and 64 requests in flight to one CDN, 56 of them spend
    their deadline in aiohttp's queue and fail as spurious timeouts.
    """

    async def request_start(
        _session: object, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        # Once per request, before its first connection: the first hop's host.
        ref = getattr(ctx, "trace_request_ctx", None)
        if isinstance(ref, _DeadlineRef) and ref.hold is not None:
            await _hold_host(ref, params.url)

    async def queued_start(_session: object, ctx: SimpleNamespace, _params: object) -> None:
        deadline = _deadline_of(ctx)
        if deadline is not None and not deadline.expired():
            deadline.reschedule(None)

    async def queued_end(_session: object, ctx: SimpleNamespace, _params: object) -> None:
        deadline = _deadline_of(ctx)
        if deadline is not None and not deadline.expired():
            deadline.reschedule(asyncio.get_running_loop().time() + ctx.trace_request_ctx.timeout)

    async def redirect(
        _session: object, ctx: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        ref = getattr(ctx, "trace_request_ctx", None)
        if not isinstance(ref, _DeadlineRef):
            return
        try:
            target = params.url.join(URL(params.response.headers.get("Location", "")))
        except ValueError:
            return  # aiohttp itself rejects the malformed Location next
        # Recorded now, so that a hop that then fails (blocked, refused) says where it went.
        ref.progress.http_status = params.response.status
        ref.progress.redirects += 1
        ref.progress.final_url = str(target)
        # aiohttp reuses the first request's ssl=False for every hop; verification may only
        # be skipped for the hosts the user named.
        host = (target.host or "").lower()
        if ref.insecure_hosts and target.scheme == "https" and host not in ref.insecure_hosts:
            raise _RedirectRefused(f"redirect from an --insecure-host to {target.host}, which is verified")
        next_hop = "Location" in params.response.headers and target.scheme in ("http", "https")
        if next_hop and ref.cooldowns is not None:
            left = ref.cooldowns.remaining(str(target))
            if left > _COOL_DOWN_SLACK_S:
                # Nothing is asked of a host that asked us to wait: this attempt ends here,
                # and fetch_url waits (without a download slot) before it tries again.
                params.response.release()
                raise _CoolingDown(target.host or "", left)
        if ref.hold is not None and next_hop:
            # The next hop is a new request to (maybe) another host: it counts there. Give
            # the connection back first (aiohttp would, right after this hook), so that no
            # connection is held while waiting: that could close a cycle of waits.
            params.response.release()
            await _hold_host(ref, target)

    trace = aiohttp.TraceConfig()
    if hosts:
        trace.on_request_start.append(request_start)
    trace.on_connection_queued_start.append(queued_start)
    trace.on_connection_queued_end.append(queued_end)
    trace.on_request_redirect.append(redirect)
    return trace


@dataclass(frozen=True, slots=True)
class _DeadlineRef:
    """What `fetch._attempt` hands to the trace hooks through aiohttp's trace_request_ctx."""

    deadline: asyncio.Timeout
    timeout: float
    progress: _Reached
    insecure_hosts: tuple[str, ...] = ()  # set only when this request skips TLS verification
    hold: hostlimit.Hold | None = None  # the host slot of this attempt, with a host table
    cooldowns: _Cooldowns | None = None  # checked for each redirect hop's host


async def _hold_host(ref: _DeadlineRef, url: URL) -> None:
    """Hold a slot of ``url``'s host; a wait for it does not count against the deadline."""
    assert ref.hold is not None
    host, port = url.raw_host, url.port
    if ref.hold.try_take(host, port):  # the common case: no wait, deadline untouched
        return
    await _off_the_clock(ref.deadline, ref.hold.take(host, port))


async def _off_the_clock(deadline: asyncio.Timeout, waiting: Awaitable[object]) -> None:
    """Await ``waiting`` with the attempt's deadline stopped: waiting for a host slot or
    for body budget is this process's doing, not the server's."""
    loop = asyncio.get_running_loop()
    when = deadline.when()
    left = None if when is None else when - loop.time()
    deadline.reschedule(None)
    try:
        await waiting
    finally:
        if left is not None and not deadline.expired():
            deadline.reschedule(loop.time() + left)


def _deadline_of(ctx: SimpleNamespace) -> asyncio.Timeout | None:
    ref = getattr(ctx, "trace_request_ctx", None)
    return ref.deadline if isinstance(ref, _DeadlineRef) else None


class _GuardedResolver(aiohttp.abc.AbstractResolver):
    """The default resolver, minus the answers the policy refuses (all refused: blocked)."""

    def __init__(self, guard: _Guard) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        refusals = [self._guard.admit(host, answer["host"]) for answer in answers]
        kept = [answer for answer, refusal in zip(answers, refusals) if refusal is None]
        if answers and not kept:
            raise _Blocked(errno.EACCES, refusals[0])
        return kept

    async def close(self) -> None:
        await self._inner.close()
