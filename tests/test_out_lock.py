"""One run per OUT (per partition of OUT): a second `pipeline run` on it stops at once.

A run is held in flight by a URL whose handler waits for an event, so "the first run is
running" is a fact the test observes (the request arrived), not a sleep.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
SLOW = ["--allow-private", "--procs", "1", "--shard-size", "1", "-q", "--read-timeout", "60", "--timeout", "90"]


class Gate:
    """``/slow.jpg`` answers only once released; ``arrived`` is set when it is asked for."""

    def __init__(self, server: HTTPServer) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()
        body = jpeg(64, 48, seed=1)

        def slow(request: Request) -> Response:
            self.arrived.set()
            self.release.wait(timeout=100)
            return Response(body, content_type="image/jpeg")

        server.expect_request("/slow.jpg").respond_with_handler(slow)
        server.expect_request("/fast.jpg").respond_with_data(jpeg(64, 48, seed=2), content_type="image/jpeg")


@pytest.fixture
def gate(server: HTTPServer) -> Iterator[Gate]:
    g = Gate(server)
    try:
        yield g
    finally:
        g.release.set()


def _manifest(path: Path, server: HTTPServer, *names: str) -> Path:
    path.write_text("url\n" + "".join(f"{server.url_for(n)}\n" for n in names))
    return path


def _start(manifest: Path, out: Path | str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, str(ROOT / "cli.py"), "run", str(manifest), "--out", str(out), *SLOW, *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=100)
    assert process.returncode == 0, err.decode()


def _statuses(catalog: Path) -> list[str]:
    with sqlite3.connect(catalog) as db:
        return [s for (s,) in db.execute("SELECT status FROM items ORDER BY row")]


def test_second_run_on_one_out_exits_2_naming_the_first(tmp_path: Path, server: HTTPServer, gate: Gate) -> None:
    manifest, out = _manifest(tmp_path / "m.csv", server, "/slow.jpg", "/fast.jpg"), tmp_path / "out"
    first = _start(manifest, out)
    assert gate.arrived.wait(timeout=60)
    for extra in ([], ["--force", "--thumb-quality", "30"]):
        result = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), *SLOW, *extra])
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"Error: {out} is in use by pid {first.pid} (another pipeline run); "
            "wait for it to end, or use another --out\n"
        )
    gate.release.set()
    _finish(first)
    assert _statuses(out / "catalog.sqlite") == ["ok", "ok"]  # nothing wiped, nothing failed


def test_dedup_and_merge_wait_for_the_run(tmp_path: Path, server: HTTPServer, gate: Gate) -> None:
    manifest, out = _manifest(tmp_path / "m.csv", server, "/slow.jpg"), tmp_path / "out"
    first = _start(manifest, out)
    assert gate.arrived.wait(timeout=60)
    for command in (["dedup", str(out)], ["merge", str(out)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"Error: {out} is in use by pid {first.pid}"), result.output
    gate.release.set()
    _finish(first)


def test_a_killed_run_leaves_no_stale_lock(tmp_path: Path, server: HTTPServer, gate: Gate) -> None:
    manifest, out = _manifest(tmp_path / "m.csv", server, "/slow.jpg", "/fast.jpg"), tmp_path / "out"
    first = _start(manifest, out)
    assert gate.arrived.wait(timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)  # its orphaned worker may still hold the pipes: not communicate()
    gate.release.set()
    result = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), *SLOW])
    assert result.exit_code == 0, result.output
    assert _statuses(out / "catalog.sqlite") == ["ok", "ok"]


def test_partitions_and_other_catalogs_of_one_out_run_side_by_side(
    tmp_path: Path, server: HTTPServer, gate: Gate
) -> None:
    manifest, out = _manifest(tmp_path / "m.csv", server, "/slow.jpg", "/fast.jpg"), tmp_path / "out"
    zero = _start(manifest, out, "--num-workers", "2", "--worker-index", "0")  # shard 0: /slow.jpg
    assert gate.arrived.wait(timeout=60)
    in_flight = out / ".tmp" / "0-of-2" / "123-inflight.jpg"  # what partition 0 is writing
    in_flight.parent.mkdir(parents=True, exist_ok=True)
    in_flight.write_bytes(b"half a jpeg")
    one = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), *SLOW, "--num-workers", "2", "--worker-index", "1"])
    assert one.exit_code == 0, one.output
    # A whole run of another manifest into the same OUT has its own catalog and lock...
    other = _manifest(tmp_path / "other.csv", server, "/fast.jpg")
    whole = CliRunner().invoke(main, ["run", str(other), "--out", str(out), *SLOW])
    assert whole.exit_code == 0, whole.output
    assert in_flight.read_bytes() == b"half a jpeg"  # ...and clears no partition's temp files
    # ...but the same partition twice is refused.
    again = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), *SLOW, "--num-workers", "2", "--worker-index", "0"])
    assert again.exit_code == 2 and f"is in use by pid {zero.pid}" in again.output
    gate.release.set()
    _finish(zero)
    assert _statuses(out / "catalog-0-of-2.sqlite") == ["ok"]
    assert _statuses(out / "catalog-1-of-2.sqlite") == ["ok"]


def test_a_catalog_beside_an_object_store_out_is_locked_too(tmp_path: Path, server: HTTPServer, gate: Gate) -> None:
    """OUT is an fsspec URL (here ``local://``, as ``s3://`` would be): the lock is beside the catalog."""
    manifest, catalog = _manifest(tmp_path / "m.csv", server, "/slow.jpg"), tmp_path / "run1.sqlite"
    nothing_stored = ["--no-thumbnails", "--no-keep-originals"]  # local:// makes no folders for objects
    first = _start(manifest, f"local://{tmp_path / 'bucket'}", "--catalog", str(catalog), *nothing_stored)
    assert gate.arrived.wait(timeout=60)
    args = ["run", str(manifest), "--out", f"local://{tmp_path / 'other'}", "--catalog", str(catalog), *SLOW, *nothing_stored]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: {catalog} is in use by pid {first.pid} (another pipeline run); "
        "wait for it to end, or use another --catalog\n"
    )
    gate.release.set()
    _finish(first)
    assert _statuses(catalog) == ["ok"]
