"""The resume check: what must refuse to mix two runs, and what must not get in the way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg
from pytest_httpserver import HTTPServer

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)
COMMON = ["--allow-private", "--procs", "1", "-q", "--retries", "0"]


def _invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def _serve(server: HTTPServer) -> None:
    for name in ("a", "b", "c"):
        server.expect_request(f"/{name}.jpg").respond_with_data(jpeg(64, 48, seed=ord(name)), content_type="image/jpeg")
    server.expect_request("/x.jpg").respond_with_data("down", status=500)


def test_another_user_agent_is_another_run(tmp_path: Path, server: HTTPServer) -> None:
    _serve(server)
    manifest, out = tmp_path / "m.csv", tmp_path / "out"
    manifest.write_text(f"url\n{server.url_for('/a.jpg')}\n")
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON, "--user-agent", "one/1.0").exit_code == 0
    result = _invoke("run", str(manifest), "--out", str(out), *COMMON, "--user-agent", "two/2.0")
    assert result.exit_code == 2
    assert "(differs: options.user_agent)" in result.output
    # The default agent names the version: an upgrade alone must not refuse a resume.
    out2 = tmp_path / "out2"
    assert _invoke("run", str(manifest), "--out", str(out2), *COMMON).exit_code == 0
    with sqlite3.connect(out2 / "catalog.sqlite") as db:
        (fingerprint,) = db.execute("SELECT value FROM meta WHERE name = 'fingerprint'").fetchone()
    assert '"user_agent": null' in fingerprint


def test_a_moved_manifest_resumes(tmp_path: Path, server: HTTPServer) -> None:
    _serve(server)
    manifest, out = tmp_path / "m.csv", tmp_path / "out"
    manifest.write_text(f"url\n{server.url_for('/a.jpg')}\n{server.url_for('/b.jpg')}\n")
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON, "--shard-size", "1").exit_code == 0
    moved = tmp_path / "elsewhere" / "renamed.csv"
    moved.parent.mkdir()
    manifest.rename(moved)
    result = CliRunner().invoke(main, ["run", str(moved), "--out", str(out), "--allow-private", "--procs", "1", "--shard-size", "1"])
    assert result.exit_code == 0, result.output
    assert "2 shards already done" in result.output


def _big_manifest(path: Path, server: HTTPServer, middle: str) -> None:
    """Over 2 MiB, so the head/tail check cannot see the middle row."""
    pad = "p" * (1 << 20)
    rows = [("/a.jpg", pad), (middle, "m"), ("/c.jpg", pad)]
    path.write_text("url,caption\n" + "".join(f"{server.url_for(u)},{c}\n" for u, c in rows))


def test_an_edit_in_the_middle_of_a_big_manifest_is_refused(tmp_path: Path, server: HTTPServer) -> None:
    _serve(server)
    manifest, out = tmp_path / "m.csv", tmp_path / "out"
    _big_manifest(manifest, server, "/x.jpg")
    assert manifest.stat().st_size > 2 << 20
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON).exit_code == 0
    size = manifest.stat().st_size
    _big_manifest(manifest, server, "/b.jpg")  # same length, another URL in the middle
    assert manifest.stat().st_size == size
    result = _invoke("run", str(manifest), "--out", str(out), *COMMON, "--retry-failed")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {manifest} changed since the run in {out} started"), result.output
    assert "--force" in result.output
    with sqlite3.connect(out / "catalog.sqlite") as db:  # nothing of the edited manifest got in
        rows = db.execute("SELECT url, status FROM items ORDER BY row").fetchall()
    assert [(u.rsplit("/", 1)[1], s) for u, s in rows] == [("a.jpg", "ok"), ("x.jpg", "failed"), ("c.jpg", "ok")]
    # --force starts over on the edited manifest.
    assert _invoke("run", str(manifest), "--out", str(out), *COMMON, "--force").exit_code == 0
