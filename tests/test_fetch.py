"""The network stage against real servers on 127.0.0.1.

pytest-httpserver (werkzeug) serves the well-formed cases; faults werkzeug cannot produce
(a short body, a reset, a stall) come from a tiny asyncio socket server running in the same
loop as the client. Retry sleeps go through an injected recorder, so nothing really waits
for a backoff and the delays themselves can be asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import random
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from conftest import self_signed_tls
from werkzeug import Request, Response
from werkzeug.datastructures import Headers

from pipeline.config import FetchOptions
from pipeline.errors import ErrorClass
from pipeline.models import FetchResult
from pipeline.net.fetch import fetch_url
from pipeline.net.headers import opted_out, parse_retry_after
from pipeline.net.retry import retry_delay
from pipeline.net.session import make_session

pytestmark = pytest.mark.timeout(60)

FAST = FetchOptions(retries=2, backoff_base=0.01, backoff_max=0.05, timeout=5.0, allow_private=True)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


class SleepRecorder:
    """Stands in for asyncio.sleep: records each retry delay instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def _fetch(url: str, options: FetchOptions, **kwargs: object) -> FetchResult:
    async with make_session(options) as session:
        return await fetch_url(session, url, options, **kwargs)


def fetch(url: str, options: FetchOptions = FAST, **kwargs: object) -> FetchResult:
    kwargs.setdefault("sleep", SleepRecorder())
    return asyncio.run(_fetch(url, options, **kwargs))


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler, *, tls: ssl.SSLContext | None = None):
    """A socket server in the running loop; yields its base URL, closes every connection after."""
    writers: set[asyncio.StreamWriter] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:  # Python 3.11's Server.close() leaves accepted sockets open
            writer.close()
        await asyncio.sleep(0)


def fetch_raw(handler: RawHandler, options: FetchOptions = FAST, **kwargs: object) -> FetchResult:
    """Fetch from a raw socket server that runs `handler` for every connection."""

    async def main() -> FetchResult:
        async with raw_server(handler) as base:
            return await _fetch(f"{base}/img", options, **kwargs)

    kwargs.setdefault("sleep", SleepRecorder())
    return asyncio.run(main())


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def assert_failed(result: FetchResult, error_class: ErrorClass) -> None:
    assert result.error_class is error_class, result
    assert result.body is None
    assert result.error_message


# ---------------------------------------------------------------------------------------------
# Success


def test_ok_returns_body_mime_and_one_attempt(httpserver):
    httpserver.expect_request("/img.png").respond_with_data(PNG, content_type="image/png; charset=binary")
    result = fetch(httpserver.url_for("/img.png"))
    assert result.error_class is None and result.error_message is None
    assert result.body == PNG
    assert result.mime == "image/png"
    assert result.http_status == 200
    assert result.attempts == 1
    assert result.redirects == 0
    assert result.final_url == httpserver.url_for("/img.png")
    assert result.elapsed_ms > 0


def test_sends_our_user_agent_and_asks_for_identity_encoding(httpserver):
    httpserver.expect_request("/h").respond_with_data(b"x")
    fetch(httpserver.url_for("/h"))
    request, _ = httpserver.log[0]
    assert request.headers["User-Agent"].startswith("pipeline/")
    assert request.headers["Accept-Encoding"] == "identity"


def test_gzip_body_is_kept_compressed(httpserver):
    packed = gzip.compress(b"not an image " * 1000)
    httpserver.expect_request("/gz").respond_with_data(
        packed, headers={"Content-Encoding": "gzip"}, content_type="image/jpeg"
    )
    result = fetch(httpserver.url_for("/gz"))
    assert result.error_class is None
    assert result.body == packed


@pytest.mark.parametrize("status", [204, 206])
def test_other_2xx_is_success(httpserver, status):
    body = b"" if status == 204 else b"partial"
    httpserver.expect_request("/s").respond_with_data(body, status=status)
    result = fetch(httpserver.url_for("/s"))
    assert result.error_class is None
    assert result.http_status == status
    assert result.body == body


# ---------------------------------------------------------------------------------------------
# HTTP errors and retries


@pytest.mark.parametrize(
    ("status", "message"), [(404, "HTTP 404 Not Found"), (410, "HTTP 410 Gone"), (403, "HTTP 403 Forbidden")]
)
def test_client_errors_are_not_retried(httpserver, status, message):
    httpserver.expect_request("/missing").respond_with_data("nope", status=status)
    result = fetch(httpserver.url_for("/missing"))
    assert_failed(result, ErrorClass.HTTP_4XX)
    assert result.http_status == status
    assert result.error_message == message
    assert result.attempts == 1
    assert len(httpserver.log) == 1


def test_503_then_200_succeeds_on_second_attempt(httpserver):
    httpserver.expect_ordered_request("/flaky").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/flaky").respond_with_data(PNG, content_type="image/png")
    result = fetch(httpserver.url_for("/flaky"))
    assert result.error_class is None
    assert result.body == PNG
    assert result.attempts == 2
    assert len(httpserver.log) == 2


def test_408_is_retried(httpserver):
    httpserver.expect_ordered_request("/slow").respond_with_data("", status=408)
    httpserver.expect_ordered_request("/slow").respond_with_data(b"ok")
    result = fetch(httpserver.url_for("/slow"))
    assert result.error_class is None and result.attempts == 2


def test_persistent_500_uses_every_attempt_with_jittered_backoff(httpserver):
    httpserver.expect_request("/down").respond_with_data("boom", status=500)
    options = replace(FAST, retries=3, backoff_base=0.01, backoff_max=0.03)
    sleep = SleepRecorder()
    result = fetch(httpserver.url_for("/down"), options, sleep=sleep, rng=random.Random(7))
    assert_failed(result, ErrorClass.HTTP_5XX)
    assert result.http_status == 500
    assert result.error_message == "HTTP 500 Internal Server Error"
    assert result.attempts == 4
    assert len(httpserver.log) == 4
    ceilings = [0.01, 0.02, 0.03]  # base * 2**n, capped at backoff_max
    assert len(sleep.delays) == len(ceilings)
    for delay, ceiling in zip(sleep.delays, ceilings):
        assert 0.0 <= delay <= ceiling


def test_retry_delay_is_full_jitter_below_the_ceiling():
    rng = random.Random(1)
    options = FetchOptions(backoff_base=1.0, backoff_max=5.0)
    for attempt, ceiling in enumerate([1.0, 2.0, 4.0, 5.0, 5.0]):
        delays = [retry_delay(attempt, None, options, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling / 4  # full jitter reaches down towards zero
    assert retry_delay(10_000, None, options, rng) <= 5.0  # no overflow on huge attempt counts


def test_429_retry_after_seconds_is_waited(httpserver):
    httpserver.expect_ordered_request("/rl").respond_with_data("", status=429, headers={"Retry-After": "2"})
    httpserver.expect_ordered_request("/rl").respond_with_data(b"ok")
    sleep = SleepRecorder()
    result = fetch(httpserver.url_for("/rl"), sleep=sleep)
    assert result.error_class is None and result.attempts == 2
    assert sleep.delays == [pytest.approx(2.0)]


def test_429_retry_after_http_date_is_waited(httpserver):
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    httpserver.expect_ordered_request("/rl").respond_with_data("", status=429, headers={"Retry-After": when})
    httpserver.expect_ordered_request("/rl").respond_with_data(b"ok")
    sleep = SleepRecorder()
    result = fetch(httpserver.url_for("/rl"), sleep=sleep)
    assert result.error_class is None
    assert len(sleep.delays) == 1
    assert 8.0 <= sleep.delays[0] <= 10.0  # the date has 1 s resolution


def test_retry_after_is_clamped_to_max_retry_after(httpserver):
    httpserver.expect_request("/rl").respond_with_data("", status=429, headers={"Retry-After": "3600"})
    options = replace(FAST, retries=2, max_retry_after=1.5)
    sleep = SleepRecorder()
    result = fetch(httpserver.url_for("/rl"), options, sleep=sleep)
    assert_failed(result, ErrorClass.HTTP_4XX)
    assert result.http_status == 429
    assert result.attempts == 3
    assert sleep.delays == [1.5, 1.5]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 30.0),
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_parse_retry_after(value, expected):
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:27:30 GMT").timestamp()
    assert parse_retry_after(value, now=now) == expected


# ---------------------------------------------------------------------------------------------
# Timeouts


async def _stall_before_response(reader, writer):
    await read_request(reader)
    await asyncio.sleep(30)


async def _stall_mid_body(reader, writer):
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    await asyncio.sleep(30)


def test_no_response_within_timeout_is_retried_then_timeout():
    options = replace(FAST, timeout=0.5, retries=1, timeout_retries=1)
    result = fetch_raw(_stall_before_response, options)
    assert_failed(result, ErrorClass.TIMEOUT)
    assert result.attempts == 2
    assert result.error_message == "no complete response within 0.5 s"


@pytest.mark.parametrize(("timeout_retries", "attempts"), [(0, 1), (1, 2), (2, 3)])
def test_timeouts_spend_their_own_smaller_retry_budget(timeout_retries: int, attempts: int) -> None:
    """--retries 2 covers every transient failure, but a server that never answers is tried
    again only --timeout-retries times: each silent attempt costs a whole --read-timeout."""
    options = replace(FAST, timeout=5.0, read_timeout=0.2, retries=2, timeout_retries=timeout_retries)
    result = fetch_raw(_stall_before_response, options)
    assert_failed(result, ErrorClass.TIMEOUT)
    assert result.attempts == attempts


def test_stalled_body_hits_the_read_timeout():
    options = replace(FAST, timeout=5.0, read_timeout=0.3, retries=0)
    result = fetch_raw(_stall_mid_body, options)
    assert_failed(result, ErrorClass.TIMEOUT)
    assert result.http_status == 200
    assert result.error_message == "read timeout: no data for 0.3 s"


def test_waiting_for_a_pool_slot_does_not_eat_the_deadline():
    """per_host=1: the third request queues ~0.6 s behind the others; its deadline is 0.5 s."""

    async def slow_ok(reader, writer):
        await read_request(reader)
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    options = replace(FAST, per_host=1, timeout=0.5, retries=0)

    async def main() -> list[FetchResult]:
        async with raw_server(slow_ok) as url, make_session(options) as session:
            return await asyncio.gather(*(fetch_url(session, url, options) for _ in range(3)))

    results = asyncio.run(main())
    assert [r.error_class for r in results] == [None, None, None]
    assert [r.body for r in results] == [b"ok"] * 3


# ---------------------------------------------------------------------------------------------
# Size limits and broken bodies


def test_content_length_over_max_bytes_is_rejected_before_reading(httpserver):
    httpserver.expect_request("/big").respond_with_data(b"x" * 5000)
    result = fetch(httpserver.url_for("/big"), replace(FAST, max_bytes=1000))
    assert_failed(result, ErrorClass.TOO_LARGE)
    assert result.error_message == "body larger than 1000 bytes (Content-Length 5000)"
    assert result.attempts == 1
    assert result.http_status == 200


def test_streamed_body_over_max_bytes_is_cut_off(httpserver):
    consumed: list[int] = []

    def chunks():
        for i in range(1000):
            consumed.append(i)
            yield b"y" * 1024

    def handler(request: Request) -> Response:
        return Response(chunks(), content_type="image/jpeg")  # no Content-Length

    httpserver.expect_request("/stream").respond_with_handler(handler)
    result = fetch(httpserver.url_for("/stream"), replace(FAST, max_bytes=12 * 1024))
    assert_failed(result, ErrorClass.TOO_LARGE)
    assert result.error_message.startswith("body larger than 12 KB (stopped after ")
    assert result.attempts == 1


def test_too_large_message_uses_human_units():
    from pipeline.net.errors import _size

    assert _size(50 * 1024 * 1024) == "50 MB"
    assert _size(1536) == "1.5 KB"
    assert _size(999) == "999 bytes"


def _body_server(body: bytes, *, announce: int | None, piece: int = 16 * 1024) -> RawHandler:
    """Answers with ``body`` written in ``piece``-byte writes, so the client reads it in many
    parts; ``announce``: the Content-Length to send (None: none, the body ends at close)."""

    async def handler(reader, writer):
        await read_request(reader)
        length = b"" if announce is None else b"Content-Length: %d\r\n" % announce
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + length + b"Connection: close\r\n\r\n")
        for start in range(0, len(body), piece):
            writer.write(body[start : start + piece])
            await writer.drain()
        writer.close()

    return handler


BIG = random.Random(3).randbytes(3 * 1024 * 1024 + 17)  # several socket reads, odd size


@pytest.mark.parametrize("announce", [len(BIG), None], ids=["content-length", "until-close"])
def test_body_read_in_many_parts_arrives_whole(announce):
    result = fetch_raw(_body_server(BIG, announce=announce), replace(FAST, retries=0))
    assert result.error_class is None, result
    assert result.body == BIG


def test_a_body_longer_than_its_content_length_never_comes_back_longer():
    """The Content-Length passed the max_bytes check, then 3x as many bytes come.

    The body ends at the Content-Length; whether the parser sees the extra bytes (data after
    `Connection: close`: malformed) before or after that end is a race, so either outcome is
    right, but never a body longer than announced.
    """
    body = random.Random(4).randbytes(300 * 1024)
    options = replace(FAST, retries=0, max_bytes=200 * 1024)
    result = fetch_raw(_body_server(body, announce=100 * 1024), options)
    if result.body is None:
        assert_failed(result, ErrorClass.CONNECT)
        assert result.error_message == "malformed HTTP response: Data after `Connection: close`"
    else:
        assert result.error_class is None, result
        assert result.body == body[: 100 * 1024]


def test_max_bytes_is_exact_while_streaming():
    body = random.Random(5).randbytes(100 * 1024 + 1)
    kept = fetch_raw(_body_server(body, announce=None), replace(FAST, retries=0, max_bytes=len(body)))
    assert kept.error_class is None and kept.body == body
    cut = fetch_raw(_body_server(body, announce=None), replace(FAST, retries=0, max_bytes=len(body) - 1))
    assert_failed(cut, ErrorClass.TOO_LARGE)
    assert cut.error_message.startswith("body larger than 100 KB (stopped after ")


def test_stalled_body_without_content_length_hits_the_read_timeout():
    async def stall(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789")
        await writer.drain()
        await asyncio.sleep(30)

    result = fetch_raw(stall, replace(FAST, timeout=5.0, read_timeout=0.3, retries=0))
    assert_failed(result, ErrorClass.TIMEOUT)
    assert result.error_message == "read timeout: no data for 0.3 s"


def _short_body_server(counter: list[int]) -> RawHandler:
    async def handler(reader, writer):
        counter.append(1)
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n" + b"0123456789"
        )
        await writer.drain()
        writer.close()

    return handler


def test_body_shorter_than_content_length_is_truncated_after_retries():
    connections: list[int] = []
    result = fetch_raw(_short_body_server(connections), replace(FAST, retries=2))
    assert_failed(result, ErrorClass.TRUNCATED)
    assert result.attempts == 3
    assert len(connections) == 3
    assert result.http_status == 200
    assert result.mime == "image/jpeg"


def test_connection_reset_mid_body_is_truncated():
    async def reset(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
        await writer.drain()
        await asyncio.sleep(0.2)  # let the client get past the headers first
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0 → RST instead of FIN

    result = fetch_raw(reset, replace(FAST, retries=1))
    assert_failed(result, ErrorClass.TRUNCATED)
    assert result.attempts == 2


# ---------------------------------------------------------------------------------------------
# Redirects


def test_redirect_chain_records_final_url_and_hops(httpserver):
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", status=301, headers={"Location": "/c"})
    httpserver.expect_request("/c").respond_with_data(PNG, content_type="image/png")
    for limit in (5, 2):  # exactly max_redirects hops are allowed
        result = fetch(httpserver.url_for("/a"), replace(FAST, max_redirects=limit))
        assert result.error_class is None, result
        assert result.final_url == httpserver.url_for("/c")
        assert result.redirects == 2
        assert result.body == PNG


def test_one_hop_more_than_max_redirects_fails(httpserver):
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", status=302, headers={"Location": "/c"})
    httpserver.expect_request("/c").respond_with_data(PNG)
    result = fetch(httpserver.url_for("/a"), replace(FAST, max_redirects=1))
    assert_failed(result, ErrorClass.REDIRECT)
    assert result.error_message == "more than 1 redirects"


def test_redirect_loop_fails(httpserver):
    httpserver.expect_request("/loop").respond_with_data("", status=302, headers={"Location": "/loop"})
    result = fetch(httpserver.url_for("/loop"))
    assert_failed(result, ErrorClass.REDIRECT)
    assert result.error_message == "more than 5 redirects"
    assert result.attempts == 1
    assert len(httpserver.log) == 6


def test_max_redirects_zero_refuses_any_redirect(httpserver):
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data(PNG)
    result = fetch(httpserver.url_for("/a"), replace(FAST, max_redirects=0))
    assert_failed(result, ErrorClass.REDIRECT)
    assert len(httpserver.log) == 1


def test_redirect_to_ftp_fails(httpserver):
    httpserver.expect_request("/a").respond_with_data(
        "", status=302, headers={"Location": "ftp://files.example/img.png"}
    )
    result = fetch(httpserver.url_for("/a"))
    assert_failed(result, ErrorClass.REDIRECT)
    assert result.error_message == "redirect to a non-http(s) URL: ftp://files.example/img.png"


def test_redirect_without_location_fails(httpserver):
    httpserver.expect_request("/a").respond_with_data("", status=302)
    result = fetch(httpserver.url_for("/a"))
    assert_failed(result, ErrorClass.REDIRECT)
    assert result.http_status == 302
    assert result.error_message == "HTTP 302 Found without a Location header"


# ---------------------------------------------------------------------------------------------
# Opt-out


@pytest.mark.parametrize(
    ("tags", "respect", "expected"),
    [
        (["noai"], True, ErrorClass.OPTED_OUT),
        (["noindex, noimageai"], True, ErrorClass.OPTED_OUT),
        (["otherbot: noindex", "noai"], True, ErrorClass.OPTED_OUT),  # two headers
        (["pipeline: noai"], True, ErrorClass.OPTED_OUT),
        (["otherbot: noai"], True, None),
        (["noindex, nofollow"], True, None),
        (["noai"], False, None),
    ],
)
def test_x_robots_tag(httpserver, tags, respect, expected):
    headers = Headers([("X-Robots-Tag", tag) for tag in tags])
    httpserver.expect_request("/img").respond_with_response(
        Response(PNG, headers=headers, content_type="image/png")
    )
    result = fetch(httpserver.url_for("/img"), replace(FAST, respect_opt_out=respect))
    assert result.error_class is expected
    assert result.attempts == 1
    assert result.body == (None if expected else PNG)
    assert result.http_status == 200


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["NoAI"], True),
        (["*: noimageai"], True),
        (["otherbot: noindex, noai"], False),  # a prefix covers the whole header
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
        (["noindex", "max-image-preview: large"], False),
        ([], False),
    ],
)
def test_opted_out_parsing(values, expected):
    assert opted_out(values, "pipeline/0.1.0 (image downloader)") is expected


# ---------------------------------------------------------------------------------------------
# Connection-level failures


def test_connection_refused_is_connect_after_retries():
    with socket.socket() as sock:  # grab a free port, then close it so nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = fetch(f"http://127.0.0.1:{port}/x", replace(FAST, retries=1))
    assert_failed(result, ErrorClass.CONNECT)
    assert result.attempts == 2
    assert result.http_status is None
    assert "connection refused" in result.error_message


def test_unresolvable_host_is_dns_without_retry():
    # .invalid is reserved (RFC 6761); the sandbox resolver answers NXDOMAIN at once.
    result = fetch("http://nonexistent.invalid/img.png")
    assert_failed(result, ErrorClass.DNS)
    assert result.attempts == 1
    assert result.error_message == "cannot resolve host nonexistent.invalid"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_untrusted_certificate_is_tls_without_retry(tmp_path):
    server_tls = self_signed_tls(tmp_path)

    async def main() -> FetchResult:
        async with raw_server(_short_body_server([]), tls=server_tls) as url:
            return await _fetch(url, FAST)

    result = asyncio.run(main())
    assert_failed(result, ErrorClass.TLS)
    assert result.attempts == 1
    assert result.error_message == "TLS error: certificate verify failed: self-signed certificate"


@pytest.mark.parametrize("url", ["not a url", "http://", "ftp://example.com/img.png"])
def test_unfetchable_urls_are_invalid(url):
    result = fetch(url)
    assert_failed(result, ErrorClass.INVALID)
    assert result.attempts == 1


def test_a_junk_status_line_is_connect_with_a_short_message():
    async def junk(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 2x0 OK" + b"z" * 50_000 + b"\r\n\r\n")
        await writer.drain()

    result = fetch_raw(junk, replace(FAST, retries=0))
    assert_failed(result, ErrorClass.CONNECT)
    assert result.error_message == "malformed HTTP response: Bad status line"


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "Bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nno colon here\r\n\r\nabc", None),
    ],
)
def test_a_malformed_response_is_retried_as_transient(junk: bytes, reason: str | None):
    """A proxy or server hiccup that garbles one response is not the URL's fault."""
    served = [0]

    async def junk_then_image(reader, writer):
        await read_request(reader)
        served[0] += 1
        writer.write(junk if served[0] == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PNG), PNG))
        await writer.drain()

    result = fetch_raw(junk_then_image, replace(FAST, retries=1))
    assert result.error_class is None and result.body == PNG, result
    assert result.attempts == 2
    failed = fetch_raw(send_junk(junk), replace(FAST, retries=1))
    assert_failed(failed, ErrorClass.CONNECT)
    assert failed.attempts == 2
    assert failed.error_message.startswith("malformed HTTP response: ")
    if reason is not None:
        assert failed.error_message == f"malformed HTTP response: {reason}"


def send_junk(junk: bytes) -> RawHandler:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(junk)
        await writer.drain()

    return handler


def test_server_closing_without_response_is_connect():
    async def hang_up(reader, writer):
        await read_request(reader)
        writer.close()

    result = fetch_raw(hang_up, replace(FAST, retries=1))
    assert_failed(result, ErrorClass.CONNECT)
    assert result.attempts == 2
