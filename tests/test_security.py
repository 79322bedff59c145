"""Hostile input at run level: names that try to escape OUT, formats we refuse to decode,
images too large to decode. (The SSRF guard and redirects: test_faults_http.py.)"""

from __future__ import annotations

import asyncio
import csv
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import encode, jpeg, photo
from rawserver import RawServer, Request, response

from pipeline.cli import main

pytestmark = pytest.mark.timeout(90)

HOSTILE_KEYS = [
    "../../escaped", "/tmp/absolute", "..", ".", "a/../../b", "..\\..\\windows", "C:\\evil",
    "nul\x00byte", "line\nbreak", "spaces and ünïcödé ☃", "%2e%2e%2fencoded", "~/home", "$(touch pwned)",
    "x" * 5000,
]  # fmt: skip


def _snapshot(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


def _route(body: bytes):
    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, body, headers={"Content-Type": "image/jpeg"}))

    return route


def test_keys_and_columns_cannot_steer_a_write_outside_out(tmp_path: Path) -> None:
    body = jpeg(80, 60, seed=11)
    with RawServer({"/img.jpg": _route(body)}) as srv:
        work = tmp_path / "work"
        work.mkdir()
        manifest = work / "m.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "url", "path"])
            for i, key in enumerate(HOSTILE_KEYS):
                url = srv.url("/img.jpg") if i % 2 else srv.url("/%2e%2e/%2e%2e/img.jpg")
                writer.writerow([key, f"{url}?k={i}", key])
        out = work / "out"
        before = _snapshot(tmp_path, out)
        result = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1", "-q"])
        assert result.exit_code == 0, result.output
    assert _snapshot(tmp_path, out) == before  # nothing appeared (or vanished) outside OUT
    assert not Path("/tmp/absolute").exists() and not (tmp_path / "escaped").exists()
    top = {p.name for p in out.iterdir()}
    assert top <= {"catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "originals", "thumbs", ".tmp", ".lock"}
    for path in out.rglob("*"):  # every name under OUT is ours: hex digests, sizes, extensions
        rel = path.relative_to(out)
        assert all(part.isascii() and ".." not in part for part in rel.parts), rel
    db = sqlite3.connect(out / "catalog.sqlite")
    keys = [k for (k,) in db.execute("SELECT key FROM items ORDER BY row")]
    statuses = {s for (s,) in db.execute("SELECT status FROM items")}
    assert keys == HOSTILE_KEYS  # stored verbatim: they are data, never names
    assert statuses == {"ok"}


def _pcx() -> bytes:
    return encode(photo(40, 30, 1), "PCX")


def _ico() -> bytes:
    return encode(photo(32, 32, 2), "ICO")


def _eps() -> bytes:
    # An EPS header: Pillow's EPS plugin would run Ghostscript on it. It must not get the chance.
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto\nshowpage\n%%EOF\n"


def test_only_allowed_formats_are_decoded_and_the_pixel_limit_applies(tmp_path: Path) -> None:
    small = jpeg(200, 100, seed=4)  # 20,000 pixels
    tiny = jpeg(90, 100, seed=5)  # 9,000 pixels
    routes = {
        "/pcx": _route(_pcx()), "/ico": _route(_ico()), "/eps": _route(_eps()),
        "/tga": _route(encode(photo(20, 20, 3), "TGA")),
        "/small": _route(small), "/tiny": _route(tiny),
    }  # fmt: skip
    with RawServer(routes) as srv:
        manifest = tmp_path / "m.csv"
        manifest.write_text("key,url\n" + "".join(f"{name[1:]},{srv.url(name)}\n" for name in routes))
        out = tmp_path / "out"
        result = CliRunner().invoke(main, [
            "run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1", "--max-pixels", "10000", "-q",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
    db = sqlite3.connect(out / "catalog.sqlite")
    got = {k: (s, e, m) for k, s, e, m in db.execute("SELECT key, status, error_class, error_message FROM items")}
    for name in ("pcx", "ico", "eps", "tga"):
        assert got[name][:2] == ("failed", "not_image"), got[name]
    assert got["ico"][2] == "ICO image; format not allowed (allowed: JPEG, PNG, GIF, WEBP, BMP, TIFF, MPO, AVIF, HEIF)"
    assert got["small"][:2] == ("failed", "too_many_pixels")
    assert got["small"][2] == "200x100 = 20000 pixels, over the limit of 10000"
    assert got["tiny"][:2] == ("ok", None)
