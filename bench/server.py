"""A loopback image server for the benchmark, run as its own process.

Deliberately minimal so that it is never the bottleneck: one asyncio loop (uvloop when
installed) speaking just enough HTTP/1.1 (GET, keep-alive, ``Connection: close``), every
response prepared in memory. It listens on many ports of 127.0.0.1 (127.0.0.1 only) because
HTTP clients cap connections per host:port; spreading URLs over ports is what a real crawl
over many hosts looks like. It reports its own CPU seconds at ``/stats`` so the driver can
show how much of the machine it took.

Routes (``N`` is any integer; it picks the pool image ``N % len(pool)`` and is written into
a JPEG comment, so every URL has distinct bytes and a distinct SHA-256, as on the web):

  /img/N.jpg                 a pool image
  /lat/MS/img/N.jpg          the same after MS milliseconds (an internet round trip)
  /tiny/N.jpg                a 16x16 JPEG (to test memory against manifest size cheaply)
  /fault/404/N, /fault/500/N, /fault/html/N, /fault/trunc/N (body cut short, then close),
  /fault/reset/N (connection closed without an answer)
  /stats                     {"cpu_s": ..., "requests": ...}

Run: ``python -m bench.server --ports 32`` prints one JSON line with the ports, then serves
until stdin closes or it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import socket
import struct
import sys
import time

from PIL import Image

from bench.images import load_pool

_REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}


def _with_comment(jpeg: bytes, n: int) -> tuple[bytes, bytes]:
    """(SOI + COM segment naming ``n``, rest of the file): a distinct valid JPEG per n."""
    text = f"bench image {n}".encode()
    return b"\xff\xd8\xff\xfe" + struct.pack(">H", len(text) + 2) + text, jpeg[2:]


def _head(status: int, length: int, ctype: bytes, close: bool) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
        % (status, _REASONS[status], ctype, length, b"close" if close else b"keep-alive")
    )


class Server:
    def __init__(self, pool: list[bytes]) -> None:
        self.pool = pool
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (90, 140, 200)).save(buf, "JPEG", quality=85)
        self.tiny = buf.getvalue()
        self.requests = 0

    def respond(self, path: str) -> tuple[list[bytes], float, bool]:
        """(chunks to write, delay in seconds, close after writing)."""
        self.requests += 1
        parts = path.split("?", 1)[0].strip("/").split("/")
        delay = 0.0
        if len(parts) >= 3 and parts[0] == "lat":
            delay = int(parts[1]) / 1000.0
            parts = parts[2:]
        try:
            n = int(parts[-1].split(".")[0])
        except ValueError:
            n = 0
        kind = parts[0]
        if kind in ("img", "tiny"):
            head, rest = _with_comment(self.pool[n % len(self.pool)] if kind == "img" else self.tiny, n)
            return [_head(200, len(head) + len(rest), b"image/jpeg", False), head, rest], delay, False
        if kind == "stats":
            body = json.dumps({"cpu_s": time.process_time(), "requests": self.requests}).encode()
            return [_head(200, len(body), b"application/json", False), body], 0.0, False
        if kind == "fault" and len(parts) >= 2:
            what = parts[1]
            if what in ("404", "500"):
                body = b"no such image" if what == "404" else b"server error"
                return [_head(int(what), len(body), b"text/plain", False), body], delay, False
            if what == "html":
                body = b"<!doctype html><html><body>not an image</body></html>"
                return [_head(200, len(body), b"text/html", False), body], delay, False
            if what == "trunc":
                head, rest = _with_comment(self.pool[n % len(self.pool)], n)
                return [_head(200, len(head) + len(rest), b"image/jpeg", True), head, rest[: len(rest) // 2]], delay, True
            if what == "reset":
                return [], delay, True
        body = b"not found"
        return [_head(404, len(body), b"text/plain", False), body], delay, False


class _Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.transport.close()  # type: ignore[union-attr]
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            try:
                _method, target, _version = lines[0].split(b" ", 2)
            except ValueError:
                self.transport.close()  # type: ignore[union-attr]
                return
            wants_close = any(
                line.lower().startswith(b"connection:") and b"close" in line.lower() for line in lines[1:]
            )
            chunks, delay, close = self.server.respond(target.decode("latin-1"))
            close = close or wants_close
            if close:
                self.closing = True
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._send, chunks, close, wants_close)
            else:
                self._send(chunks, close, wants_close)

    def _send(self, chunks: list[bytes], close: bool, wants_close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if wants_close and chunks:
            chunks = [chunks[0].replace(b"Connection: keep-alive", b"Connection: close"), *chunks[1:]]
        if chunks:
            transport.writelines(chunks)
        if close:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(n_ports: int) -> None:
    server = Server(load_pool())
    loop = asyncio.get_running_loop()
    servers = []
    for _ in range(n_ports):
        # 127.0.0.1 only: the benchmark never listens on a reachable address.
        srv = await loop.create_server(lambda: _Conn(server), "127.0.0.1", 0, backlog=4096, reuse_address=True)
        servers.append(srv)
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"ports": ports, "images": len(server.pool)}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(1) else None)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.ports))


if __name__ == "__main__":
    main()
