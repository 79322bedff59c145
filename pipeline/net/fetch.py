"""The network stage: one URL in, one ``FetchResult`` out. The only aiohttp importer.

A worker process runs one asyncio loop per shard job and opens one session for it with
``make_session``; ``fetch_url`` is then called once per URL. ``fetch_url`` never raises for a
per-item failure: every aiohttp/OS exception is translated here, at the stage edge, into an
``ErrorClass`` plus a short human message (see ``_classify``).

Per attempt::

    request ──► status? ──2xx──► X-Robots-Tag opt-out? ──► Content-Length ≤ max_bytes? ──► stream body
                   │                                                      (abort past max_bytes)
                   ├─408/429/5xx──► retry (backoff with full jitter, Retry-After honoured)
                   └─other 3xx/4xx──► fail at once

Connect errors, timeouts and truncated bodies are retried too; everything else is final.

Guards that hold for every hop of a redirect chain, not just the manifest's URL:

* SSRF: addresses are checked where they are final (the resolver's answer for a name, the
  socket about to connect for an IP literal) against ``pipeline.netguard``; a refusal is
  ``blocked``. ``--allow-private`` / ``--allow-host`` opt out.
* Only http(s) (aiohttp refuses other schemes on redirect; we map that to ``redirect``).
* Credentials: aiohttp drops Authorization and Cookie when a redirect changes origin, and
  the session keeps no cookie jar, so nothing a server sets travels anywhere.
* TLS is verified except for hosts named in ``--insecure-host``; a redirect from such a host
  to another host is refused rather than followed unverified.
* Host cool-down: a 429/503 with Retry-After holds every URL of that host in this session
  (clamped by ``--max-retry-after``), not just the one that was told to wait. It is kept
  under the host that answered, and looked up for every hop before it is requested, so a
  redirect to a CDN that is cooling down waits too (``_CoolingDown``).
* Waiting is not working: retry backoff and cool-downs sleep through ``sleep``, which the
  worker gives a function that lets go of the row's download slot meanwhile; the host slot
  is held per attempt only, never across a sleep.
* Bodies in a process hold at most ``--body-budget`` bytes (``_BodyBudget``), besides
  aiohttp's read buffer (~128 KB per connection): from their first byte read until the
  caller gives them back (``BodyLease.close``: the worker does once the CPU stage is done
  with the body). A body waits for its bytes with its connection open (aiohttp stops
  reading from the socket, and its read timeout, once its buffer is full), off the
  attempt's clock, like a wait for a host slot.
* Per-host limits for the whole machine: where the executor installed the shared host table
  (``pipeline.hostlimit``), every hop holds a slot of its host from its start until the
  body is read or the attempt fails, so ``--per-host`` and ``--per-host-rate`` count the
  requests of all worker processes. Waiting for that slot does not count against the
  attempt's deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import random
import socket
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from http import HTTPStatus
from types import SimpleNamespace

import aiohttp
import aiohttp.abc
from yarl import URL

from pipeline.net import hostlimit
from pipeline.config import FetchOptions
from pipeline.errors import ErrorClass
from pipeline.models import FetchResult
from pipeline.net.guard import AddressPolicy

__all__ = [
    "BodyLease",
    "body_lease",
    "fetch_url",
    "make_session",
    "opted_out",
    "parse_retry_after",
    "retry_delay",
]

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that carry their own "name: value"; the name before their colon
# is not a user-agent prefix (https://developers.google.com/search/docs/crawling-indexing/robots-meta-tag).
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_RETRY_STATUSES = frozenset({408, 429})
# A hop waits for its host's cool-down only if more than this is left: a retry that slept
# for the whole Retry-After may wake a hair early (the loop runs timers within its clock
# resolution), and must not be sent back for a millisecond.
_COOL_DOWN_SLACK_S = 0.05
_RNG = random.Random()

Sleep = Callable[[float], Awaitable[object]]


# ---------------------------------------------------------------------------------------------
# Session


def make_session(options: FetchOptions) -> aiohttp.ClientSession:
    """One session per shard job; call it inside the running loop that will use it."""
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
    # is enforced in `_attempt` with asyncio.timeout, paused while queued (see `_trace_config`).
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
    """What `_attempt` hands to the trace hooks through aiohttp's trace_request_ctx."""

    deadline: asyncio.Timeout
    timeout: float
    progress: _Progress
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


class _RedirectRefused(Exception):
    """Raised from the redirect hook; becomes a ``redirect`` failure."""


class _CoolingDown(Exception):
    """Raised from the redirect hook when the next hop's host is cooling down."""

    def __init__(self, host: str, seconds: float) -> None:
        super().__init__(host, seconds)
        self.host = host
        self.seconds = seconds


# ---------------------------------------------------------------------------------------------
# SSRF guard: applied to the addresses actually connected to


class _Blocked(OSError):
    """An address the policy refuses; raised inside aiohttp's connect, found in `_classify`."""


class _Guard:
    """The session's address policy plus the addresses of exempt hosts already resolved."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        # Addresses that --allow-host names resolved to: the socket hook sees only the address.
        self.approved: set[str] = set()

    def admit(self, host: str, address: str) -> str | None:
        """The refusal message for connecting to ``address`` as ``host``, or None."""
        refusal = self.policy.refusal(host, address)
        if refusal is None and not self.policy.allow_private and self.policy.host_exempt(host):
            self.approved.add(address)
        return refusal

    def socket_factory(self, addr_info: tuple) -> socket.socket:  # type: ignore[type-arg]
        """aiohttp's last step before connect(); IP-literal URLs skip the resolver, not this."""
        family, type_, proto, _, sockaddr = addr_info
        address = str(sockaddr[0])
        if address not in self.approved and (refusal := self.admit(address, address)):
            raise _Blocked(errno.EACCES, refusal)
        return socket.socket(family, type_, proto)


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


def _blocked_in(exc: BaseException) -> _Blocked | None:
    """The `_Blocked` under aiohttp's wrapping (os_error / __cause__), if any."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, _Blocked):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None


# ---------------------------------------------------------------------------------------------
# Host cool-down


class _Cooldowns:
    """Per session: until when (loop time) each host asked us, via Retry-After, to wait."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    @staticmethod
    def _key(url: str) -> str | None:
        try:
            u = URL(url)
        except (ValueError, TypeError):
            return None
        return f"{u.host}:{u.port}" if u.host else None

    def hold(self, url: str, seconds: float) -> None:
        key = self._key(url)
        if key is None or seconds <= 0:
            return
        now = asyncio.get_running_loop().time()
        # Forget hosts that cooled down, so a long shard's dict stays small.
        self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[key] = max(self._until.get(key, 0.0), now + seconds)

    def remaining(self, url: str) -> float:
        if not self._until:  # the common case: skip parsing the URL (yarl) on every request
            return 0.0
        key = self._key(url)
        until = self._until.get(key, 0.0) if key is not None else 0.0
        return max(0.0, until - asyncio.get_running_loop().time())


_COOLDOWNS: weakref.WeakKeyDictionary[aiohttp.ClientSession, _Cooldowns] = weakref.WeakKeyDictionary()
# The host table's gate a session's requests go through, when there is one (make_session).
_GATES: weakref.WeakKeyDictionary[aiohttp.ClientSession, hostlimit.HostGate] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------
# Body budget


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


# ---------------------------------------------------------------------------------------------
# Fetch with retries


@dataclass(slots=True)
class _Progress:
    """How far one attempt got; kept so a failure still reports status and final URL."""

    final_url: str
    http_status: int | None = None
    redirects: int = 0
    mime: str | None = None
    reading_body: bool = False

    def saw(self, resp: aiohttp.ClientResponse) -> None:
        self.final_url = str(resp.url)
        self.http_status = resp.status
        self.redirects = len(resp.history)
        self.mime = _mime(resp.headers.get("Content-Type"))


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One attempt's result; `retry` says whether another attempt may help."""

    progress: _Progress
    body: bytes | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None
    retry: bool = False
    retry_after: float | None = None
    deferred: bool = False  # nothing asked of a host cooling down; wait `retry_after`, go again


async def fetch_url(
    session: aiohttp.ClientSession,
    url: str,
    options: FetchOptions,
    *,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
    lease: BodyLease | None = None,
) -> FetchResult:
    """Fetch one URL, retrying transient failures. Never raises for a per-item failure.

    Every wait (backoff, Retry-After, a host's cool-down) goes through ``sleep``: the worker
    passes one that gives the row's download slot back while it sleeps. With ``lease``, a
    body returned stays counted against the body budget until the caller closes the lease;
    without, until this returns.
    """
    rng = rng or _RNG
    started = time.perf_counter()
    cooldowns = _COOLDOWNS.get(session)
    attempts = timeouts = deferrals = 0
    delay = 0.0
    while True:
        # One wait per attempt: the backoff, or longer if the host is cooling down.
        wait = max(delay, cooldowns.remaining(url) if cooldowns is not None else 0.0)
        if wait > 0:
            await sleep(wait)
        # A hop to a host cooling down is put off, not counted as an attempt (nothing was asked
        # of that host), at most retries + 1 times: a host whose cool-down other URLs keep
        # renewing is then asked anyway, once per attempt, as the first hop's host would be.
        hop_cooldowns = cooldowns if deferrals <= options.retries else None
        try:
            outcome = await _attempt(session, url, options, hop_cooldowns, lease)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: still data, never a crashed shard
            outcome = _Outcome(
                _Progress(final_url=url),
                error_class=ErrorClass.INTERNAL,
                error_message=f"unexpected {type(exc).__name__}: {_short(exc)}",
            )
        if outcome.deferred:
            deferrals += 1
            delay = outcome.retry_after or 0.0
            continue
        attempts += 1
        timeouts += outcome.error_class is ErrorClass.TIMEOUT
        if outcome.retry_after is not None and cooldowns is not None:
            cooldowns.hold(outcome.progress.final_url, min(outcome.retry_after, options.max_retry_after))
        if not outcome.retry or attempts > options.retries or timeouts > options.timeout_retries:
            break
        delay = retry_delay(attempts - 1, outcome.retry_after, options, rng)
    progress = outcome.progress
    return FetchResult(
        final_url=progress.final_url,
        http_status=progress.http_status,
        attempts=attempts,
        redirects=progress.redirects,
        mime=progress.mime,
        body=outcome.body,
        error_class=outcome.error_class,
        error_message=outcome.error_message,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )


def retry_delay(
    failed_attempt: int, retry_after: float | None, options: FetchOptions, rng: random.Random
) -> float:
    """Full-jitter backoff (0-based `failed_attempt`), never shorter than a clamped Retry-After.

    Full jitter spreads the retries of a shard that all failed at once on the same host
    (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """
    ceiling = min(options.backoff_max, options.backoff_base * 2 ** min(failed_attempt, 60))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.max_retry_after))
    return delay


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    options: FetchOptions,
    cooldowns: _Cooldowns | None = None,
    lease: BodyLease | None = None,
) -> _Outcome:
    progress = _Progress(final_url=url)
    deadline = asyncio.timeout(options.timeout)
    insecure = bool(options.insecure_hosts) and _host_of(url) in options.insecure_hosts
    gate = _GATES.get(session)
    # Taken by the trace hooks (first hop, then each redirect); given back here, once the
    # body is read or the attempt failed. A retry is a new attempt and takes it again.
    hold = hostlimit.Hold(gate, options.per_host, options.per_host_rate) if gate is not None else None
    try:
        # aiohttp raises TooManyRedirects once it has *received* max_redirects redirects,
        # so +1 lets exactly `options.max_redirects` hops through (and 0 lets none).
        async with (
            deadline,
            session.get(
                url,
                max_redirects=options.max_redirects + 1,
                ssl=not insecure,
                trace_request_ctx=_DeadlineRef(
                    deadline,
                    options.timeout,
                    progress,
                    options.insecure_hosts if insecure else (),
                    hold,
                    cooldowns,
                ),
            ) as resp,
        ):
            return await _read_response(
                resp, options, progress, deadline, lease or body_lease(session), keep=lease is not None
            )
    except Exception as exc:  # noqa: BLE001 - every per-item failure becomes data at the stage edge
        return _classify(exc, progress, options, deadline_hit=deadline.expired())
    finally:
        if hold is not None:
            hold.drop()


async def _read_response(
    resp: aiohttp.ClientResponse,
    options: FetchOptions,
    progress: _Progress,
    deadline: asyncio.Timeout,
    lease: BodyLease,
    *,
    keep: bool,
) -> _Outcome:
    progress.saw(resp)
    status = resp.status
    if not 200 <= status < 300:
        return _status_outcome(resp, progress)
    if options.respect_opt_out and opted_out(resp.headers.getall("X-Robots-Tag", []), options.user_agent):
        resp.close()  # drop the connection rather than drain a body we must not use
        return _Outcome(
            progress,
            error_class=ErrorClass.OPTED_OUT,
            error_message="server opted out of AI use (X-Robots-Tag)",
        )
    length = resp.content_length
    if length is not None and length > options.max_bytes:
        resp.close()
        return _too_large(progress, options, f"Content-Length {length}")
    progress.reading_body = True
    # readany() returns what is buffered, as received; iter_chunked(64 KB) first copied it
    # into 64 KB slices: +0.03 CPU-ms per 264 KB image (bench/fetch_overhead.py). aiohttp's
    # flow control bounds that buffer, so max_bytes is still checked every few hundred KB.
    content = resp.content
    chunks: list[bytes] = []
    total = 0
    kept = False
    try:
        # An announced body takes all its bytes before the first read (it never holds part
        # of the budget while waiting for the rest); an unannounced one, each chunk it reads.
        if length is not None and not lease.try_take(length):
            await _off_the_clock(deadline, lease.take(length))
        while chunk := await content.readany():
            total += len(chunk)
            if total > options.max_bytes:
                resp.close()
                return _too_large(progress, options, f"stopped after {total} bytes")
            if length is None and not lease.try_take(len(chunk)):
                await _off_the_clock(deadline, lease.take(len(chunk)))
            chunks.append(chunk)
        kept = keep
        return _Outcome(progress, body=b"".join(chunks))
    finally:
        if not kept:  # a failed read, or a caller that does not hold on to the body
            lease.close()


def _status_outcome(resp: aiohttp.ClientResponse, progress: _Progress) -> _Outcome:
    status = resp.status
    # The standard phrase, not the server's reason: messages stay the same across servers
    # (werkzeug says "NOT FOUND") and a hostile reason line cannot flood the catalog.
    message = f"HTTP {status} {_phrase(status) or _short(resp.reason or '', 40)}".rstrip()
    if status in _RETRY_STATUSES or status >= 500:
        return _Outcome(
            progress,
            error_class=ErrorClass.HTTP_5XX if status >= 500 else ErrorClass.HTTP_4XX,
            error_message=message,
            retry=True,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        )
    if 400 <= status < 500:
        return _Outcome(progress, error_class=ErrorClass.HTTP_4XX, error_message=message)
    if 300 <= status < 400:
        # aiohttp follows 301/302/303/307/308 itself; what reaches us is 300/304/... or a
        # redirect without Location.
        if "Location" not in resp.headers and status in (301, 302, 303, 307, 308):
            message += " without a Location header"
        return _Outcome(progress, error_class=ErrorClass.REDIRECT, error_message=message)
    return _Outcome(progress, error_class=ErrorClass.INTERNAL, error_message=f"unexpected {message}")


def _too_large(progress: _Progress, options: FetchOptions, detail: str) -> _Outcome:
    return _Outcome(
        progress,
        error_class=ErrorClass.TOO_LARGE,
        error_message=f"body larger than {_size(options.max_bytes)} ({detail})",
    )


# ---------------------------------------------------------------------------------------------
# Exceptions → error classes


def _classify(exc: Exception, progress: _Progress, options: FetchOptions, *, deadline_hit: bool) -> _Outcome:
    """Translate one exception; order matters because aiohttp's classes inherit widely."""

    def fail(error_class: ErrorClass, message: str, *, retry: bool = False) -> _Outcome:
        return _Outcome(progress, error_class=error_class, error_message=message, retry=retry)

    if blocked := _blocked_in(exc):
        return fail(ErrorClass.BLOCKED, blocked.strerror or str(blocked))
    if isinstance(exc, _RedirectRefused):
        return fail(ErrorClass.REDIRECT, str(exc))
    if isinstance(exc, _CoolingDown):
        return _Outcome(progress, retry=True, retry_after=exc.seconds, deferred=True)
    if isinstance(exc, aiohttp.TooManyRedirects):
        if exc.history:
            progress.final_url = str(exc.history[-1].url)
            progress.redirects = len(exc.history)
        return fail(ErrorClass.REDIRECT, f"more than {options.max_redirects} redirects")
    if isinstance(exc, aiohttp.NonHttpUrlRedirectClientError):
        return fail(ErrorClass.REDIRECT, f"redirect to a non-http(s) URL: {_short(exc.args[0])}")
    if isinstance(exc, aiohttp.InvalidUrlRedirectClientError):
        return fail(ErrorClass.REDIRECT, f"redirect to an invalid URL: {_short(exc.args[0])}")
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return fail(ErrorClass.INVALID, f"not a fetchable http(s) URL: {_short(progress.final_url)}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return fail(ErrorClass.TIMEOUT, f"connect timeout after {options.connect_timeout} s", retry=True)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return fail(ErrorClass.TIMEOUT, f"read timeout: no data for {options.read_timeout} s", retry=True)
    if isinstance(exc, TimeoutError):  # ours (the per-attempt deadline) or another aiohttp one
        what = "no complete response" if deadline_hit else "timed out"
        return fail(ErrorClass.TIMEOUT, f"{what} within {options.timeout} s", retry=True)
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)):
        return fail(ErrorClass.TLS, f"TLS error: {_tls_reason(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # EAI_AGAIN is a resolver hiccup; a name that does not exist will not start to.
        transient = getattr(exc.os_error, "errno", None) == socket.EAI_AGAIN
        return fail(ErrorClass.DNS, f"cannot resolve host {exc.host}", retry=transient)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return fail(ErrorClass.TRUNCATED, f"body cut short: {_payload_reason(exc)}", retry=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError)):
        if progress.reading_body:
            return fail(ErrorClass.TRUNCATED, "connection closed in the middle of the body", retry=True)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return fail(
                ErrorClass.CONNECT, f"cannot connect to {exc.host}:{exc.port}: {_os_reason(exc)}", retry=True
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return fail(ErrorClass.CONNECT, "server closed the connection without a response", retry=True)
        return fail(ErrorClass.CONNECT, f"connection error: {_os_reason(exc)}", retry=True)
    if isinstance(exc, aiohttp.ClientResponseError):  # aiohttp could not parse the response
        # The parser's message goes on to quote the server's bytes (50 KB of a junk status
        # line, 400 KB of data after `Connection: close`): its first line is enough.
        # Retried like a connection error: a garbled response is mostly a proxy or an
        # overloaded server having a bad moment, not a property of the URL (issue 11).
        reason = str(exc.message).split("\n", 1)[0].rstrip(": ")
        return fail(ErrorClass.CONNECT, f"malformed HTTP response: {_short(reason)}", retry=True)
    return fail(ErrorClass.INTERNAL, f"unexpected {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# Header parsing (pure, tested directly)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None.

    A date in the past gives 0.0; anything unparseable gives None (i.e. ignore the header).
    ``now`` is a Unix time, for tests.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():  # RFC 9110 §10.2.3: delta-seconds = 1*DIGIT
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def opted_out(values: list[str] | tuple[str, ...], user_agent: str) -> bool:
    """Whether X-Robots-Tag header values forbid AI use (noai/noimageai) for our agent.

    Each header holds comma-separated directives, optionally prefixed by a bot name
    (``otherbot: noai, noimageai``); a prefix applies to the rest of that header. Directives
    without a prefix, or for ``*``, or for our product token apply to us.
    """
    ours = {"*", _product_token(user_agent)}
    for value in values:
        agent: str | None = None
        for item in value.split(","):
            name, sep, rest = item.partition(":")
            name = name.strip().lower()
            if sep and name not in _VALUED_DIRECTIVES and " " not in name:
                agent, item = name, rest
            if (agent is None or agent in ours) and item.strip().lower() in OPT_OUT_DIRECTIVES:
                return True
    return False


def _product_token(user_agent: str) -> str:
    """'pipeline/0.1.0 (image downloader...)' → 'pipeline'."""
    return user_agent.strip().split("/", 1)[0].split(None, 1)[0].lower()


def _host_of(url: str) -> str:
    try:
        return (URL(url).host or "").lower()
    except (ValueError, TypeError):
        return ""


def _mime(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


# ---------------------------------------------------------------------------------------------
# Message helpers


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _short(value: object, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _os_reason(exc: Exception) -> str:
    """The human part of an OSError-ish exception ('Connection refused'), not its repr."""
    os_error = getattr(exc, "os_error", None) or exc
    code = getattr(os_error, "errno", None)
    text = getattr(os_error, "strerror", None) or str(os_error) or type(exc).__name__
    if code == errno.ECONNREFUSED:
        return "connection refused"
    return _short(text)


def _tls_reason(exc: Exception) -> str:
    """'certificate verify failed: self-signed certificate' rather than the whole SSL repr."""
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    if verify := getattr(inner, "verify_message", None):
        return f"certificate verify failed: {verify}"
    if reason := getattr(inner, "reason", None):
        return str(reason).replace("_", " ").lower()
    return _short(inner)


def _payload_reason(exc: aiohttp.ClientPayloadError) -> str:
    cause = exc.__cause__ or (exc.args[1] if len(exc.args) > 1 else None)
    if cause is not None and type(cause).__name__ == "ContentLengthError":
        return "fewer bytes than Content-Length"
    return _short(exc.args[0] if exc.args else "payload error")
