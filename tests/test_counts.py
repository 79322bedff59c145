"""Counts and classes the user reads: status bytes after --retry-failed, duplicates.json
with repeated keys, status on a folder that holds no run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)
COMMON = ["--allow-private", "--procs", "1", "-q", "--retries", "0"]


def _invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def test_retry_failed_keeps_the_bytes_of_the_rows_it_did_not_run(tmp_path: Path, server: HTTPServer) -> None:
    good, late = jpeg(320, 240, seed=1), jpeg(200, 150, seed=2)
    calls = {"late": 0}

    def fails_once(request: Request) -> Response:
        calls["late"] += 1
        return Response("busy", 500) if calls["late"] == 1 else Response(late, 200, content_type="image/jpeg")

    server.expect_request("/good.jpg").respond_with_data(good, content_type="image/jpeg")
    server.expect_request("/late.jpg").respond_with_handler(fails_once)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"url\n{server.url_for('/good.jpg')}\n{server.url_for('/late.jpg')}\n")
    out = tmp_path / "out"
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON).exit_code == 0
    status = json.loads(_invoke("status", str(out), "--json").output)
    assert (status["bytes"], status["by_status"]) == (len(good), {"ok": 1, "failed": 1})

    assert _invoke("run", str(manifest), "--out", str(out), *COMMON, "--retry-failed").exit_code == 0
    status = json.loads(_invoke("status", str(out), "--json").output)
    assert (status["bytes"], status["by_status"]) == (len(good) + len(late), {"ok": 2})
    with sqlite3.connect(out / "catalog.sqlite") as db:
        assert db.execute("SELECT rows, ok, fetched FROM shards").fetchall() == [(2, 2, 2)]


def test_duplicates_json_keeps_rows_whose_keys_repeat(tmp_path: Path, server: HTTPServer) -> None:
    first, other = jpeg(320, 240, seed=3), jpeg(320, 240, seed=4)
    server.expect_request("/a.jpg").respond_with_data(first, content_type="image/jpeg")
    server.expect_request("/copy.jpg").respond_with_data(first, content_type="image/jpeg")
    server.expect_request("/b.jpg").respond_with_data(other, content_type="image/jpeg")
    manifest = tmp_path / "m.csv"
    rows = [("same", "/a.jpg"), ("same", "/copy.jpg"), ("same", "/b.jpg")]
    manifest.write_text("key,url\n" + "".join(f"{k},{server.url_for(u)}\n" for k, u in rows))
    out = tmp_path / "out"
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON).exit_code == 0
    result = _invoke("dedup", str(out))
    assert result.exit_code == 0, result.output
    # Keys repeat, so entries are keyed by row number: no row is lost or lists itself.
    assert json.loads((out / "duplicates.json").read_text()) == {"0": ["1"], "1": ["0"], "2": []}


def test_duplicates_json_uses_keys_when_they_are_unique(tmp_path: Path, server: HTTPServer) -> None:
    body = jpeg(320, 240, seed=5)
    server.expect_request("/a.jpg").respond_with_data(body, content_type="image/jpeg")
    server.expect_request("/b.jpg").respond_with_data(body, content_type="image/jpeg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"key,url\nx,{server.url_for('/a.jpg')}\ny,{server.url_for('/b.jpg')}\n")
    out = tmp_path / "out"
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON).exit_code == 0
    assert _invoke("dedup", str(out)).exit_code == 0
    assert json.loads((out / "duplicates.json").read_text()) == {"x": ["y"], "y": ["x"]}


@pytest.mark.parametrize("command", ["status", "export", "dedup"])
def test_a_folder_without_a_catalog_is_a_usage_error(tmp_path: Path, command: str) -> None:
    result = _invoke(command, str(tmp_path))
    assert result.exit_code == 2, result.output
    hint = " (a run with --catalog elsewhere: give the same --catalog)"  # each takes --catalog (locate.py)
    assert result.output == (
        f"Error: no catalog at {tmp_path / 'catalog.sqlite'}: is this a pipeline output folder?{hint}\n"
    )
