"""``--layout key`` with OUT on an object store (moto's S3 server on 127.0.0.1): the names the
catalog lists are the objects there, one upload per name (issue 12)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import jpeg
from pytest_httpserver import HTTPServer

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)


def test_key_layout_on_s3_uploads_every_name(s3: Any, server: HTTPServer, tmp_path: Path) -> None:
    server.expect_request("/a.jpg").respond_with_data(jpeg(120, 90, seed=1), content_type="image/jpeg")
    server.expect_request("/b.jpg").respond_with_data(jpeg(120, 90, seed=2), content_type="image/jpeg")
    rows = [("/a.jpg", "k1"), ("/a.jpg", "k2"), ("/b.jpg", "dup"), ("/a.jpg", "DUP"), ("/b.jpg", "../up")]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"url": server.url_for(u), "key": k}) + "\n" for u, k in rows))
    catalog = tmp_path / "run.sqlite"
    result = CliRunner().invoke(main, ["run", str(manifest), "--out", "s3://bucket/named", "--catalog", str(catalog),
                                       "--layout", "key", "--allow-private", "--procs", "1", "-q"])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    with sqlite3.connect(catalog) as db:
        paths = [json.loads(t)[0]["path"] for (t,) in db.execute("SELECT thumbnails FROM items ORDER BY row")]
    assert paths == [f"thumbs/256-q85/{n}.jpg" for n in ("k1", "k2", "dup", "DUP~2", "%2E%2E/up")]
    s3.invalidate_cache()
    thumbs = {key.removeprefix("bucket/named/"): s3.cat_file(key) for key in s3.find("bucket/named/thumbs")}
    assert set(thumbs) == set(paths)
    assert thumbs[paths[0]] == thumbs[paths[1]] == thumbs[paths[3]] != thumbs[paths[2]] == thumbs[paths[4]]
