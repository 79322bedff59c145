"""Shards overlap inside a worker process: the next shard starts while the previous one
still waits for its last downloads, and finished shards are committed without waiting for
a slow one. Real worker process, real server, the real catalog.

Each test holds one download of shard 0 until the run has done something that is only
possible with overlap, bounded in time; without overlap the wait runs out and the test
fails on what the server saw.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from conftest import jpeg
from rawserver import RawServer, Request, response

from pipeline import run

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spawned workers, /proc"),
]
IMAGE = jpeg(64, 48, seed=7)
HOLD_S = 20.0  # how long the held download waits for the proof, at most


def _image(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, IMAGE, headers={"Content-Type": "image/jpeg"}))


async def _img(request: Request, writer: asyncio.StreamWriter) -> None:
    _image(request, writer)


def _manifest(tmp_path: Path, srv: RawServer, rows: int) -> Path:
    manifest = tmp_path / "m.txt"
    urls = [srv.url("/held")] + [f"{srv.url('/img')}?n={i}" for i in range(1, rows)]
    manifest.write_text("\n".join(urls) + "\n")
    return manifest


def _committed_shards(catalog: Path) -> set[int]:
    if not catalog.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
            return {shard for (shard,) in db.execute("SELECT shard_id FROM shards")}
    except sqlite3.OperationalError:  # created but no schema yet
        return set()


def _until(condition, seen: dict[str, bool], name: str):
    """A route that answers the held download once ``condition()`` holds (or time runs out)."""

    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        deadline = time.monotonic() + HOLD_S
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        seen[name] = condition()
        _image(request, writer)

    return route


def test_the_next_shard_starts_while_a_download_of_the_previous_is_in_flight(tmp_path: Path) -> None:
    seen: dict[str, bool] = {}
    srv = RawServer({"/img": _img})

    def next_shard_requested() -> bool:
        return any(int(r.query.get("n", ["0"])[0]) >= 8 for r in srv.requests("/img"))

    srv.routes["/held"] = _until(next_shard_requested, seen, "overlap")
    with srv:
        manifest = _manifest(tmp_path, srv, 24)
        summary = run(manifest, out=tmp_path / "out", procs=1, shard_size=8, allow_private=True)
    assert seen == {"overlap": True}  # shard 1 was downloading while shard 0 still waited
    assert summary.by_status == {"ok": 24}


def test_shards_after_a_slow_one_are_committed_before_it_finishes(tmp_path: Path) -> None:
    seen: dict[str, bool] = {}
    out = tmp_path / "out"
    srv = RawServer({"/img": _img})
    srv.routes["/held"] = _until(lambda: {1, 2} <= _committed_shards(out / "catalog.sqlite"), seen, "committed")
    with srv:
        manifest = _manifest(tmp_path, srv, 24)
        summary = run(manifest, out=out, procs=1, shard_size=8, allow_private=True)
    assert seen == {"committed": True}  # shards 1 and 2 were in the catalog while 0 waited
    assert summary.by_status == {"ok": 24}
    assert _committed_shards(out / "catalog.sqlite") == {0, 1, 2}
