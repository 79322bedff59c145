"""Failures as data: an attempt's exception or HTTP status becomes an ``ErrorClass`` and a short message."""

from __future__ import annotations

import errno
import socket
from http import HTTPStatus

import aiohttp

from pipeline.config import FetchOptions
from pipeline.errors import ErrorClass
from pipeline.net.guard import _blocked_in
from pipeline.net.headers import parse_retry_after
from pipeline.net.outcome import _AttemptResult, _Reached

_RETRY_STATUSES = frozenset({408, 429})


class _RedirectRefused(Exception):
    """Raised from the redirect hook; becomes a ``redirect`` failure."""


class _CoolingDown(Exception):
    """Raised from the redirect hook when the next hop's host is cooling down."""

    def __init__(self, host: str, seconds: float) -> None:
        super().__init__(host, seconds)
        self.host = host
        self.seconds = seconds


def _status_outcome(resp: aiohttp.ClientResponse, progress: _Reached) -> _AttemptResult:
    status = resp.status
    # The standard phrase, not the server's reason: messages stay the same across servers
    # (werkzeug says "NOT FOUND") and a hostile reason line cannot flood the catalog.
    message = f"HTTP {status} {_phrase(status) or _short(resp.reason or '', 40)}".rstrip()
    if status in _RETRY_STATUSES or status >= 500:
        return _AttemptResult(
            progress,
            error_class=ErrorClass.HTTP_5XX if status >= 500 else ErrorClass.HTTP_4XX,
            error_message=message,
            retry=True,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        )
    if 400 <= status < 500:
        return _AttemptResult(progress, error_class=ErrorClass.HTTP_4XX, error_message=message)
    if 300 <= status < 400:
        # aiohttp follows 301/302/303/307/308 itself; what reaches us is 300/304/... or a
        # redirect without Location.
        if "Location" not in resp.headers and status in (301, 302, 303, 307, 308):
            message += " without a Location header"
        return _AttemptResult(progress, error_class=ErrorClass.REDIRECT, error_message=message)
    return _AttemptResult(progress, error_class=ErrorClass.INTERNAL, error_message=f"unexpected {message}")


def _too_large(progress: _Reached, options: FetchOptions, detail: str) -> _AttemptResult:
    return _AttemptResult(
        progress,
        error_class=ErrorClass.TOO_LARGE,
        error_message=f"body larger than {_size(options.max_bytes)} ({detail})",
    )


def _classify(exc: Exception, progress: _Reached, options: FetchOptions, *, deadline_hit: bool) -> _AttemptResult:
    """Translate one exception; order matters because aiohttp's classes inherit widely."""

    def fail(error_class: ErrorClass, message: str, *, retry: bool = False) -> _AttemptResult:
        return _AttemptResult(progress, error_class=error_class, error_message=message, retry=retry)

    if blocked := _blocked_in(exc):
        return fail(ErrorClass.BLOCKED, blocked.strerror or str(blocked))
    if isinstance(exc, _RedirectRefused):
        return fail(ErrorClass.REDIRECT, str(exc))
    if isinstance(exc, _CoolingDown):
        return _AttemptResult(progress, retry=True, retry_after=exc.seconds, deferred=True)
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
