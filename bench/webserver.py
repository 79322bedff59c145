"""The web-like crawl's servers: 150 loopback hosts in one asyncio process.

One process, one event loop (uvloop when installed), because it shares the 2 cores with the
clients it serves: every host ``127.0.1.k`` gets one listening socket (HTTPS through
``ssl`` with the local CA's certificate, or plain HTTP, per ``bench/webcorpus.py``'s plan),
speaking just enough HTTP/1.1 (GET, keep-alive, ``Connection: close``). Per request it
waits a lognormal time to first byte (deterministic per row and attempt), then answers as
the plan says for the row: the picture from the corpus (bandwidth-capped per connection on
a quarter of hosts), or its fault.

Run: ``python -m bench.webserver --seed 1 --rows 5000`` prints one JSON line
``{"ports": {"127.0.1.1": port, ...}}`` and then obeys lines on stdin: ``stats`` (prints a
JSON line: its own CPU seconds, requests, answers by status, peak open connections),
``reset`` (forgets how often each row was asked, so a 503-then-200 row fails once per
run; prints ``{"reset": true}``). It exits when stdin closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import signal
import socket
import ssl
import struct
import sys
import time
from pathlib import Path

from bench.webcorpus import (
    MIME,
    RETRY_AFTER_S,
    Certs,
    Host,
    Plan,
    Row,
    ensure_certs,
    image_file,
    make_plan,
    url,
)

LATENCY_MEDIAN_S = 0.050
LATENCY_SIGMA = 1.0  # ln-space; P(> 1.3 s) = 0.06 %, and 1.3 s is the cap
LATENCY_MAX_S = 1.3
CHUNK = 16 * 1024  # bandwidth cap granularity
HANG_S = 600.0  # a silent URL holds its connection at most this long (or until the client leaves)
REASONS = {200: "OK", 302: "Found", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip
HTML = b"<!doctype html><html><head><title>Photo</title></head><body><p>Sign in to see this photo.</p></body></html>"


def latency(seed: int, row: int, attempt: int) -> float:
    """Seconds to first byte: lognormal, median 50 ms, capped; the same for every runner."""
    rng = random.Random((seed * 1_000_003 + row) * 64 + min(attempt, 63))
    return min(LATENCY_MAX_S, LATENCY_MEDIAN_S * math.exp(rng.gauss(0.0, LATENCY_SIGMA)))


def head(status: int, length: int, ctype: str, close: bool, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
        f"{extra}Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    ).encode("latin-1")


class WebServer:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.ports: dict[str, int] = {}
        self.hits: collections.Counter[int] = collections.Counter()  # requests per row this run
        self.statuses: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.open = 0
        self.peak_open = 0

    def stats(self) -> dict[str, object]:
        return {"cpu_s": round(time.process_time(), 3), "requests": self.requests, "statuses": dict(self.statuses),
                "peak_open_connections": self.peak_open}  # fmt: skip

    def reset(self) -> None:
        self.hits.clear()
        self.statuses.clear()
        self.requests = 0
        self.peak_open = self.open

    def lookup(self, host: Host, target: str) -> tuple[Row | None, bool]:
        """(row, asked at its redirect path) or (None, _) for anything not in the plan."""
        parts = target.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("i", "r"):
            return None, False
        try:
            n = int(parts[1].split(".", 1)[0])
        except ValueError:
            return None, False
        if not 0 <= n < len(self.plan.rows) or self.plan.rows[n].host != host.index:
            return None, False
        return self.plan.rows[n], parts[0] == "r"

    async def handle(self, host: Host, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ConnectionError,
                    ssl.SSLError,
                ):
                    return
                lines = request.decode("latin-1").split("\r\n")
                try:
                    _method, target, _version = lines[0].split(" ", 2)
                except ValueError:
                    return
                close = any(x.lower().startswith("connection:") and "close" in x.lower() for x in lines[1:])
                if not await self.answer(host, target, close, reader, writer) or close:
                    return
        except (ConnectionError, ssl.SSLError, OSError):
            return
        finally:
            self.open -= 1
            if not writer.is_closing():
                writer.close()

    async def answer(self, host: Host, target: str, close: bool, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:  # fmt: skip
        """Answer one request; False when the connection must end (fault or client gone)."""
        self.requests += 1
        row, at_redirect = self.lookup(host, target)
        if row is None:
            return await self.send(writer, head(404, 9, "text/plain", close), b"not found", None, "404")
        attempt = self.hits[row.row]
        self.hits[row.row] += 1
        await asyncio.sleep(latency(self.plan.seed, row.row, attempt))
        kind = row.kind
        if kind in ("404", "500"):
            body = b"no such photo" if kind == "404" else b"internal error"
            return await self.send(writer, head(int(kind), len(body), "text/plain", close), body, None, kind)
        if kind == "503-then-200" and attempt == 0:
            body = b"busy, try again"
            return await self.send(writer, head(503, len(body), "text/plain", close), body, None, "503")
        if kind == "429-first" and attempt == 0:
            body = b"slow down"
            extra = f"Retry-After: {RETRY_AFTER_S}\r\n"
            return await self.send(
                writer, head(429, len(body), "text/plain", close, extra), body, None, "429"
            )
        if kind == "hang":
            self.statuses["hang"] += 1
            try:  # accepted, request read, then nothing ever: until the client gives up
                await asyncio.wait_for(reader.read(), HANG_S)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                pass
            return False
        if kind == "redirect" and at_redirect:
            location = url(self.plan, self.ports, row, f"/i/{row.row}.{row.ext}")
            return await self.send(
                writer, head(302, 0, "text/plain", close, f"Location: {location}\r\n"), b"", None, "302"
            )
        if kind == "html":
            return await self.send(writer, head(200, len(HTML), "image/jpeg", close), HTML, None, "html")
        data = image_file(self.plan.seed, row.row, row.ext).read_bytes()
        header = head(200, len(data), MIME[row.ext], close)
        if kind == "reset":
            await self.send(writer, header, data[: len(data) // 2], host.cap_bytes_per_s, "reset")
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: the close sends RST, as a crashed backend does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        return await self.send(writer, header, data, host.cap_bytes_per_s, "200")

    async def send(self, writer: asyncio.StreamWriter, header: bytes, body: bytes, cap: float | None,
                   label: str) -> bool:  # fmt: skip
        self.statuses[label] += 1
        if cap is None or len(body) <= CHUNK:
            writer.write(header + body)
            await writer.drain()
            return True
        writer.write(header)
        started = time.monotonic()
        for offset in range(0, len(body), CHUNK):
            writer.write(body[offset : offset + CHUNK])
            await writer.drain()
            # Pace against the start, not per chunk, so timer slack does not add up.
            ahead = started + (offset + CHUNK) / cap - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return True


async def serve(plan: Plan, certs: Certs) -> None:
    server = WebServer(plan)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.cert, certs.key)
    listeners = []
    for host in plan.hosts:
        # Loopback only (127.0.1.k): nothing here is reachable from outside the machine.
        srv = await asyncio.start_server(
            lambda r, w, h=host: server.handle(h, r, w), host.address, 0,
            ssl=tls if host.https else None, limit=65536, backlog=1024, reuse_address=True,
        )  # fmt: skip
        server.ports[host.address] = srv.sockets[0].getsockname()[1]
        listeners.append(srv)
    print(json.dumps({"ports": server.ports}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    pending = bytearray()

    def on_stdin() -> None:
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            stop.set()
            return
        pending.extend(chunk)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            command = line.decode().strip()
            if command == "reset":
                server.reset()
                print(json.dumps({"reset": True}), flush=True)
            elif command == "stats":
                print(json.dumps(server.stats()), flush=True)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()
    for srv in listeners:
        srv.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--hosts", type=int, default=150)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--certs-dir", type=Path, required=True)
    args = parser.parse_args()
    plan = make_plan(args.seed, args.rows, args.hosts, faults=not args.no_faults)
    certs = ensure_certs(args.certs_dir, len(plan.hosts))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(plan, certs))


if __name__ == "__main__":
    main()
