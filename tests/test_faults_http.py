"""Network faults and hostile servers, at the fetch edge and at run level.

The fetch-level retry/limit/error-mapping cases live in test_fetch.py; this file adds what a
crawl meets on top: the SSRF guard, redirects to other schemes and hosts, credentials on
redirect, TLS opt-out per host, the host cool-down, the per-host connection cap, and one
real run through the CLI in which every fault gets its own row: each row must end with the
right status, no partial file may be visible, and the run must go on and end.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import shutil
import socket
import sqlite3
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import encode, jpeg, photo, self_signed_tls
from rawserver import RawServer, Request, reset, response

from pipeline.cli import main
from pipeline.config import FetchOptions
from pipeline.errors import ErrorClass
from pipeline.models import FetchResult
from pipeline.net.fetch import fetch_url
from pipeline.net.guard import blocked_reason
from pipeline.net.session import make_session

pytestmark = pytest.mark.timeout(90)

GUARDED = FetchOptions(retries=0, timeout=5.0)  # the default policy: private addresses refused
OPEN = replace(GUARDED, allow_private=True)
JPEG = jpeg(64, 48, seed=3)
TALL = encode(photo(1, 100_000, 1).convert("L"), "PNG")  # extreme aspect ratio, but a fine image


def fetch_all(urls: list[str], options: FetchOptions, **kwargs: object) -> list[FetchResult]:
    async def main_() -> list[FetchResult]:
        async with make_session(options) as session:
            return list(await asyncio.gather(*(fetch_url(session, u, options, **kwargs) for u in urls)))

    return asyncio.run(main_())


def fetch(url: str, options: FetchOptions = OPEN, **kwargs: object) -> FetchResult:
    return fetch_all([url], options, **kwargs)[0]


def send(data: bytes):
    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return route


def redirect(location: str, status: int = 302, **headers: str):
    return send(response(status, headers={"Location": location, **headers}))


# ---------------------------------------------------------------------------------------------
# SSRF guard


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("240.0.0.1", "private"), ("255.255.255.255", "private"), ("192.0.2.7", "private"),
        ("fd12:3456::1", "private"), ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"),  # NAT64 and 6to4 embeddings
        ("not-an-ip", "not an IP address"),
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert blocked_reason(address) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(address) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.jpg", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.jpg",
        "http://100.64.0.1/x.jpg", "http://224.0.0.1/x.jpg", "http://0.0.0.0:9/x.jpg", "http://[::1]:9/x.jpg",
        "http://[fd00::1]/x.jpg", "http://[::ffff:127.0.0.1]:9/x.jpg", "http://[::ffff:a9fe:a9fe]/x.jpg",
    ],
)  # fmt: skip
def test_ip_literal_urls_are_blocked_before_connecting(url: str) -> None:
    # The guard raises in the socket factory, before connect(): nothing leaves the machine.
    result = fetch(url, GUARDED)
    assert result.error_class is ErrorClass.BLOCKED, result
    assert result.attempts == 1 and result.http_status is None
    assert result.error_message.startswith("refused to connect to ")
    assert "address (see --allow-private, --allow-host)" in result.error_message


def test_a_name_resolving_to_loopback_is_blocked() -> None:
    with RawServer({"/x.jpg": send(response(200, JPEG))}) as srv:
        result = fetch(srv.url("/x.jpg", host="localhost"), GUARDED)
        assert srv.log == []
    assert result.error_class is ErrorClass.BLOCKED
    assert result.error_message.startswith("refused to connect to localhost (")
    assert "loopback address" in result.error_message


def test_redirects_into_private_space_are_blocked_on_every_hop() -> None:
    """The first hop is allowed by --allow-host; the hops it redirects to are not."""
    routes = {"/x.jpg": send(response(200, JPEG))}
    with RawServer(routes) as srv:
        routes["/to-name"] = redirect(srv.url("/x.jpg", host="localhost"))
        routes["/to-literal"] = redirect(srv.url("/x.jpg", host="127.0.0.2"))
        routes["/to-mapped"] = redirect(srv.url("/x.jpg", host="[::ffff:7f00:1]"))
        routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data/iam/")
        options = replace(GUARDED, allow_hosts=("127.0.0.1",))
        paths = ["/to-name", "/to-literal", "/to-mapped", "/to-metadata"]
        results = fetch_all([srv.url(p) for p in paths], options)
        assert srv.requests("/x.jpg") == []
    for result in results:
        assert result.error_class is ErrorClass.BLOCKED, result
        assert result.http_status == 302  # what the allowed first hop answered


def test_allow_host_and_allow_private_opt_out() -> None:
    with RawServer({"/x.jpg": send(response(200, JPEG))}) as srv:
        by_name = fetch(srv.url("/x.jpg", host="localhost"), replace(GUARDED, allow_hosts=("LOCALHOST",)))
        by_ip = fetch(srv.url("/x.jpg"), replace(GUARDED, allow_hosts=("127.0.0.1",)))
        other_ip = fetch(srv.url("/x.jpg", host="127.0.0.2"), replace(GUARDED, allow_hosts=("127.0.0.1",)))
        private = fetch(srv.url("/x.jpg", host="localhost"), OPEN)
    assert by_name.body == by_ip.body == private.body == JPEG
    assert other_ip.error_class is ErrorClass.BLOCKED


# ---------------------------------------------------------------------------------------------
# Redirects, schemes, credentials, TLS


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1:70/_x", "data:image/png;base64,AAAA"])
def test_redirect_to_a_non_http_scheme_fails_on_any_hop(target: str) -> None:
    routes: dict = {}
    with RawServer(routes) as srv:
        routes["/first"] = redirect(srv.url("/second"), 301)
        routes["/second"] = redirect(target, 307)
        result = fetch(srv.url("/first"))
    assert result.error_class is ErrorClass.REDIRECT, result
    assert result.error_message.startswith("redirect to a non-http(s) URL")


def test_credentials_and_cookies_never_follow_a_redirect_to_another_host() -> None:
    with RawServer({"/x.jpg": send(response(200, JPEG))}) as other, RawServer({}) as first:
        first.routes["/same"] = redirect(first.url("/next"), **{"Set-Cookie": "session=s3cret; Path=/"})
        first.routes["/next"] = redirect(other.url("/x.jpg"), **{"Set-Cookie": "more=1"})
        url = first.url("/same").replace("http://", "http://user:pa55@")
        result = fetch(url)
        assert result.body == JPEG and result.redirects == 2
        [hop1], [hop2], [final] = first.requests("/same"), first.requests("/next"), other.requests("/x.jpg")
    assert hop1.headers["authorization"].startswith("Basic ")  # sent to the host it was meant for
    assert hop2.headers["authorization"] == hop1.headers["authorization"]  # same origin: kept
    assert "cookie" not in hop2.headers  # no cookie jar: what a server sets is never sent back
    assert "authorization" not in final.headers and "cookie" not in final.headers


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_self_signed_tls_is_allowed_only_for_insecure_hosts(tmp_path: Path) -> None:
    tls = self_signed_tls(tmp_path)  # its certificate names 127.0.0.1, and nobody trusts it
    hosts_served: list[str] = []

    async def serve_tls() -> tuple[FetchResult, ...]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            hosts_served.append(head.lower().split("host: ", 1)[1].split(":", 1)[0])
            if head.startswith("GET /hop "):  # to the same server under another name
                writer.write(response(302, headers={"Location": f"https://localhost:{port}/x.jpg"}))
            else:
                writer.write(response(200, JPEG))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        base = f"https://127.0.0.1:{port}"
        try:
            insecure = replace(OPEN, insecure_hosts=("127.0.0.1",))
            async with make_session(OPEN) as s1, make_session(insecure) as s2:
                return (
                    await fetch_url(s1, f"{base}/x.jpg", OPEN),
                    await fetch_url(s2, f"{base}/x.jpg", insecure),
                    await fetch_url(s2, f"{base}/hop", insecure),
                )
        finally:
            server.close()

    verified, trusted, hop = asyncio.run(serve_tls())
    assert verified.error_class is ErrorClass.TLS
    assert trusted.error_class is None and trusted.body == JPEG
    assert hop.error_class is ErrorClass.REDIRECT
    assert hop.error_message == "redirect from an --insecure-host to localhost, which is verified"
    assert "localhost" not in hosts_served  # the unverified hop to another host was never made


# ---------------------------------------------------------------------------------------------
# Host cool-down and per-host limit


def test_retry_after_holds_every_url_of_that_host() -> None:
    """A 429 with Retry-After: 1 on /a holds /b and /c of the same host for that second;
    another host is not held. Lower bounds only: the guarantee is "not before"."""
    served = asyncio.Event()
    first_429: list[float] = []

    async def limited(request: Request, writer: asyncio.StreamWriter) -> None:
        if not first_429:
            writer.write(response(429, headers={"Retry-After": "1"}))
            await writer.drain()
            first_429.append(asyncio.get_running_loop().time())
            loop_of_test.call_soon_threadsafe(served.set)
        else:
            writer.write(response(200, JPEG))

    ok = send(response(200, JPEG))
    with RawServer({"/a": limited, "/b": ok, "/c": ok}) as host, RawServer({"/d": ok}) as other:

        async def main_() -> list[FetchResult]:
            options = replace(OPEN, retries=1, backoff_base=0.0)
            async with make_session(options) as session:
                first = asyncio.create_task(fetch_url(session, host.url("/a"), options))
                await served.wait()  # the 429 has been sent: now the others start
                urls = (host.url("/b"), host.url("/c"), other.url("/d"))
                rest = [asyncio.create_task(fetch_url(session, u, options)) for u in urls]
                return list(await asyncio.gather(first, *rest))

        loop_of_test = asyncio.new_event_loop()
        try:
            results = loop_of_test.run_until_complete(main_())
        finally:
            loop_of_test.close()
        a_retry, b, c = host.requests("/a")[1], host.requests("/b")[0], host.requests("/c")[0]
        d = other.requests("/d")[0]
    assert [r.error_class for r in results] == [None] * 4
    assert results[0].attempts == 2
    for held in (a_retry, b, c):
        assert held.arrived - first_429[0] >= 0.9  # server clock: monotonic in the same process
    assert d.arrived < b.arrived and d.arrived < c.arrived  # another host is not held


def test_per_host_cap_is_what_the_server_sees(tmp_path: Path) -> None:
    """20 URLs on one host, --per-host 2, --concurrency 64, one worker: at most 2 connections."""

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(response(200, JPEG, headers={"Content-Type": "image/jpeg"}))

    with RawServer({"/img": slow}) as srv:
        manifest = tmp_path / "m.txt"
        manifest.write_text("".join(f"{srv.url('/img')}?n={i}\n" for i in range(20)))
        result = CliRunner().invoke(main, [
            "run", str(manifest), "--out", str(tmp_path / "out"), "--allow-private", "--procs", "1",
            "--per-host", "2", "--concurrency", "64", "-q",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert len(srv.log) == 20
        assert srv.max_active == 2  # 2, not 1: the cap, not an accident of serial fetching


# ---------------------------------------------------------------------------------------------
# One run, every fault


def _png_header_only(width: int, height: int) -> bytes:
    """A valid small PNG that claims huge dimensions: the decoder must never allocate them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


async def _drip(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
    for byte in JPEG[:300]:  # one byte every 0.1 s: never silent long enough for --read-timeout
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.1)


async def _slow_headers(request: Request, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(20)


async def _endless(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"\xff" * 65536)
    for _ in range(100_000):  # bounded: ~6.5 GB, far beyond any --max-bytes used here
        writer.write(chunk)
        await writer.drain()


async def _reset_mid_body(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(JPEG) + JPEG[:500])
    await writer.drain()
    reset(writer)


def _fault_routes() -> tuple[dict, dict[str, tuple[str, str | None, int | None]]]:
    """Routes, and for each the expected (status, error_class, attempts)."""
    state = {"flaky": 0}

    async def flaky(request: Request, writer: asyncio.StreamWriter) -> None:
        state["flaky"] += 1
        writer.write(response(503) if state["flaky"] == 1 else response(200, JPEG))

    bomb = gzip.compress(b"\x00" * (20 << 20), 9)  # 20 MB of zeros in ~20 KB
    rng = random.Random(5)
    routes = {
        "/ok": send(response(200, JPEG)),
        "/404": send(response(404)),
        "/410": send(response(410)),
        "/503-then-200": flaky,
        "/500": send(response(500)),
        "/429-3600": send(response(429, headers={"Retry-After": "3600"})),
        "/slow-headers": _slow_headers,
        "/drip": _drip,
        "/endless": _endless,
        "/short": send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + JPEG[:100]),
        "/reset": _reset_mid_body,
        "/big-length": send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + JPEG),
        "/gzip-bomb": send(response(200, bomb, headers={"Content-Encoding": "gzip", "Content-Type": "image/jpeg"})),
        "/hop1": redirect("/hop2"),
        "/hop2": redirect("/ok", 308),
        "/loop": redirect("/loop"),
        "/to-file": redirect("file:///etc/passwd"),
        "/html": send(response(200, b"<html><body>nope</body></html>", headers={"Content-Type": "text/html"})),
        "/empty": send(response(200, b"")),
        "/random": send(response(200, rng.randbytes(4096))),
        "/truncated": send(response(200, JPEG[: len(JPEG) // 2])),
        "/pixel-bomb": send(response(200, _png_header_only(100_000, 100_000))),
        "/tall": send(response(200, TALL)),
    }
    expected = {
        "/ok": ("ok", None, 1),
        "/404": ("failed", "http_4xx", 1),
        "/410": ("failed", "http_4xx", 1),
        "/503-then-200": ("ok", None, 2),
        "/500": ("failed", "http_5xx", 2),
        "/429-3600": ("failed", "http_4xx", 2),
        "/slow-headers": ("failed", "timeout", 1),  # --timeout-retries 0: a silent server is not retried
        "/drip": ("failed", "timeout", 1),
        "/endless": ("failed", "too_large", 1),
        "/short": ("failed", "truncated", 2),
        "/reset": ("failed", "truncated", 2),
        "/big-length": ("failed", "too_large", 1),
        "/gzip-bomb": ("failed", "not_image", 1),
        "/hop1": ("ok", None, 1),
        "/loop": ("failed", "redirect", 1),
        "/to-file": ("failed", "redirect", 1),
        "/html": ("failed", "not_image", 1),
        "/empty": ("failed", "not_image", 1),
        "/random": ("failed", "not_image", 1),
        "/truncated": ("failed", "truncated", 1),
        "/pixel-bomb": ("failed", "too_many_pixels", 1),
        "/tall": ("ok", None, 1),
    }
    return routes, expected


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_run_survives_every_network_fault(tmp_path: Path) -> None:
    routes, expected = _fault_routes()
    with RawServer(routes) as srv:
        manifest = tmp_path / "m.csv"
        rows = [(path, srv.url(path)) for path in expected]
        rows += [("ssrf-name", srv.url("/ok", host="localhost")), ("ssrf-metadata", "http://169.254.169.254/latest/")]
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            refused = f"http://127.0.0.1:{sock.getsockname()[1]}/x.jpg"
        rows += [("refused", refused), ("unresolvable", "http://nonexistent.invalid/x.jpg")]
        manifest.write_text("key,url\n" + "".join(f"{k},{u}\n" for k, u in rows))
        out = tmp_path / "out"
        result = CliRunner().invoke(main, [
            "run", str(manifest), "--out", str(out), "--allow-host", "127.0.0.1", "--procs", "2",
            "--shard-size", "4", "--timeout", "1", "--read-timeout", "0.5", "--retries", "1",
            "--max-retry-after", "0.2", "--max-bytes", "1000000", "--max-redirects", "3",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
    db = sqlite3.connect(out / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    got = {r["key"]: r for r in db.execute("SELECT * FROM items")}
    assert len(got) == len(rows)  # every row recorded, none twice (key is unique here)
    for path, (status, error_class, attempts) in expected.items():
        row = got[path]
        assert (row["status"], row["error_class"], row["attempts"]) == (status, error_class, attempts), (
            path, row["error_message"],
        )  # fmt: skip
    assert got["ssrf-name"]["error_class"] == got["ssrf-metadata"]["error_class"] == "blocked"
    assert (got["refused"]["error_class"], got["refused"]["attempts"]) == ("connect", 2)
    assert (got["unresolvable"]["error_class"], got["unresolvable"]["attempts"]) == ("dns", 1)
    assert got["/hop1"]["redirects"] == 2 and got["/hop1"]["final_url"] == srv.url("/ok")
    assert got["/drip"]["error_message"] == "no complete response within 1.0 s"
    assert got["/big-length"]["error_message"].endswith("(Content-Length 1000000000)")
    assert "gzip data" in got["/gzip-bomb"]["error_message"]  # kept compressed, never inflated
    assert got["/tall"]["width"] == 1 and got["/tall"]["height"] == 100_000
    assert json.loads(got["/tall"]["thumbnails"])[0]["height"] == 256
    # No partial file is visible: every stored file is whole (its name is its content's hash).
    assert not any((out / ".tmp").iterdir())
    for path in list((out / "originals").rglob("*.*")):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    assert {p.stem for p in (out / "originals").rglob("*.*")} == {
        hashlib.sha256(JPEG).hexdigest(), hashlib.sha256(TALL).hexdigest()
    }
