"""Helpers shared by the cluster tests: a small manifest served on 127.0.0.1, and the
comparisons that say two runs produced the same catalog rows and the same files."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from conftest import encode, jpeg, photo
from pytest_httpserver import HTTPServer

# Timing and bookkeeping columns differ between any two runs; everything else must not.
_VOLATILE = {"updated_at", "fetch_ms", "process_ms"}


def serve_manifest(server: HTTPServer, folder: Path, *, images: int = 9, shard_size: int = 2) -> Path:
    """A CSV manifest of ``images`` good images, a repeat, a 404, a non-image and a bad row."""
    urls = []
    for i in range(images):
        body = jpeg(160 + 8 * i, 120, seed=i) if i % 3 else encode(photo(120, 90, i), "PNG")
        kind = "image/png" if i % 3 == 0 else "image/jpeg"
        server.expect_request(f"/img/{i}").respond_with_data(body, content_type=kind)
        urls.append(server.url_for(f"/img/{i}"))
    server.expect_request("/missing").respond_with_data("no", status=404)
    server.expect_request("/text").respond_with_data("hello", content_type="text/plain")
    urls += [server.url_for("/missing"), urls[1], server.url_for("/text"), "ftp://example.invalid/x.jpg"]
    manifest = folder / "manifest.csv"
    manifest.write_text("key,url,caption\n" + "".join(f"k{i},{u},cap {i}\n" for i, u in enumerate(urls)))
    return manifest


def catalog_rows(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM items ORDER BY row")]
    return [{k: v for k, v in r.items() if k not in _VOLATILE} for r in rows]


def shard_counts(path: Path) -> list[tuple[int, int, int, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT shard_id, rows, ok, failed FROM shards ORDER BY shard_id").fetchall()


def stored_files(root: Path) -> dict[str, str]:
    """``{path relative to OUT: sha256 of its bytes}`` for every image file of a run."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for top in ("thumbs", "originals")
        for p in sorted((root / top).rglob("*"))
        if p.is_file()
    }
