"""Fetching one URL: one URL in, one ``FetchResult`` out, retried; the network stage's entry.

A worker process keeps one asyncio loop and one session (``session.make_session``) for the
run; ``fetch_url`` is then called once per URL. ``fetch_url`` never raises for a per-item
failure: every aiohttp/OS exception is translated at the stage edge into an ``ErrorClass``
plus a short human message (``errors._classify``).

Per attempt::

    request ──► status? ──2xx──► X-Robots-Tag opt-out? ──► Content-Length ≤ max_bytes? ──► stream body
                   │                                                      (abort past max_bytes)
                   ├─408/429/5xx──► retry (backoff with full jitter, Retry-After honoured)
                   └─other 3xx/4xx──► fail at once

Connect errors, timeouts and truncated bodies are retried too; everything else is final.

Guards that hold for every hop of a redirect chain, not just the manifest's URL:

* SSRF: addresses are checked where they are final (the resolver's answer for a name, the
  socket about to connect for an IP literal) against ``guard.py``; a refusal is
  ``blocked``. ``--allow-private`` / ``--allow-host`` opt out.
* Only http(s) (aiohttp refuses other schemes on redirect; we map that to ``redirect``).
* Credentials: aiohttp drops Authorization and Cookie when a redirect changes origin, and
  the session keeps no cookie jar, so nothing a server sets travels anywhere.
* TLS is verified except for hosts named in ``--insecure-host``; a redirect from such a host
  to another host is refused rather than followed unverified.
* Host cool-down: a 429/503 with Retry-After holds every URL of that host in this session
  (clamped by ``--max-retry-after``), not just the one that was told to wait. It is kept
  under the host that answered, and looked up for every hop before it is requested, so a
  redirect to a CDN that is cooling down waits too (``retry._Cooldowns``, ``_CoolingDown``).
* Waiting is not working: retry backoff and cool-downs sleep through ``sleep``, which the
  worker gives a function that lets go of the row's download slot meanwhile; the host slot
  is held per attempt only, never across a sleep.
* Bodies in a process hold at most ``--body-budget`` bytes (``budget.py``), besides
  aiohttp's read buffer (~128 KB per connection): from their first byte read until the
  caller gives them back (``BodyLease.close``: the worker does once the CPU stage is done
  with the body). A body waits for its bytes with its connection open (aiohttp stops
  reading from the socket, and its read timeout, once its buffer is full), off the
  attempt's clock, like a wait for a host slot.
* Per-host limits for the whole machine: where the executor installed the shared host table
  (``hostlimit.py``), every hop holds a slot of its host from its start until the
  body is read or the attempt fails, so ``--per-host`` and ``--per-host-rate`` count the
  requests of all worker processes. Waiting for that slot does not count against the
  attempt's deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pipeline.config import FetchOptions
from pipeline.errors import ErrorClass
from pipeline.models import FetchResult
from pipeline.net import hostlimit
from pipeline.net.budget import BodyLease, body_lease
from pipeline.net.errors import _classify, _short, _status_outcome, _too_large
from pipeline.net.headers import _host_of, opted_out
from pipeline.net.outcome import _AttemptResult, _Reached
from pipeline.net.retry import _Cooldowns, retry_delay
from pipeline.net.session import _COOLDOWNS, _GATES, _DeadlineRef, _off_the_clock

if TYPE_CHECKING:
    import aiohttp

__all__ = ["fetch_url"]

_RNG = random.Random()

Sleep = Callable[[float], Awaitable[object]]


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
            outcome = _AttemptResult(
                _Reached(final_url=url),
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


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    options: FetchOptions,
    cooldowns: _Cooldowns | None = None,
    lease: BodyLease | None = None,
) -> _AttemptResult:
    progress = _Reached(final_url=url)
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
    progress: _Reached,
    deadline: asyncio.Timeout,
    lease: BodyLease,
    *,
    keep: bool,
) -> _AttemptResult:
    progress.saw(resp)
    status = resp.status
    if not 200 <= status < 300:
        return _status_outcome(resp, progress)
    if options.respect_opt_out and opted_out(resp.headers.getall("X-Robots-Tag", []), options.user_agent):
        resp.close()  # drop the connection rather than drain a body we must not use
        return _AttemptResult(
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
        return _AttemptResult(progress, body=b"".join(chunks))
    finally:
        if not kept:  # a failed read, or a caller that does not hold on to the body
            lease.close()
