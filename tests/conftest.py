"""Shared fixtures: a real threaded HTTP server on 127.0.0.1 and real image bytes."""

from __future__ import annotations

import io
import random
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from pytest_httpserver import HTTPServer


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    """A threaded pytest-httpserver: worker processes make many requests at once."""
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.clear()
        if srv.is_running():
            srv.stop()


def self_signed_tls(folder: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1 (openssl CLI)."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def photo(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A photo-like picture: gradient sky, shapes and noise, different for every seed."""
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    tint = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    im = Image.blend(im, tint, 0.5)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(10, width // 2 + 11), y0 + rng.randrange(10, height // 2 + 11)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    im = Image.blend(im, noise, 0.15)
    return im.convert(mode) if mode != "RGB" else im


def encode(im: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 85) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=quality)


# --- a local S3 (moto) for the object-store tests ------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[Any]:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from bench.s3 import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def s3(moto: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An s3fs filesystem on the test server; worker processes inherit the same env."""
    import fsspec
    import s3fs

    from bench.s3 import FOREIGN_ENV

    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # stores made in this process build their own
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    moto.reset_counts()
    yield fs
    moto.hook = None
    moto.wait_idle()  # uploads a test held and released are answered before the bucket goes
    fs.invalidate_cache()
    fs.rm("bucket", recursive=True)
