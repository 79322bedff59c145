"""Outputs on an object store: the real S3 protocol against moto's server on 127.0.0.1.

The server is ``bench.s3.MotoServer``: moto's app in werkzeug's threaded server, with a hook
called in each request's thread before moto sees it. Tests hold uploads in that hook to look
at what a run does meanwhile (what is committed, what is left in $TMPDIR), and read the
requests it made from the server's counts. Runs that are killed or watched are subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cluster_helpers import catalog_rows, serve_manifest, stored_files
from conftest import jpeg
from pytest_httpserver import HTTPServer

from pipeline.cli import main
from pipeline.errors import StorageError
from pipeline.store.local import open_store

fsspec = pytest.importorskip("fsspec")
pytestmark = pytest.mark.timeout(120)
SHA = "ab" + "0" * 62
ROOT = Path(__file__).resolve().parent.parent


class Gate:
    """A server hook that holds the uploads (PUTs under ``prefix``) that ``hold(path)`` picks,
    until ``release()``; ``wait_held(n)`` waits until ``n`` of them are inside the server."""

    def __init__(self, prefix: str = "/bucket/run/", hold: Callable[[str], bool] = lambda path: True) -> None:
        self.prefix = prefix
        self.hold = hold
        self.held = 0
        self._changed = threading.Condition()
        self._open = threading.Event()

    def __call__(self, method: str, path: str) -> None:
        if method != "PUT" or not path.startswith(self.prefix) or not self.hold(path):
            return
        with self._changed:
            self.held += 1
            self._changed.notify_all()
        self._open.wait(timeout=100)  # a bound, so that a failed test cannot hang the server

    def wait_held(self, n: int, timeout: float = 60) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.held >= n, timeout=timeout)

    def release(self) -> None:
        self._open.set()


def _images(folder: Path, n: int) -> dict[str, str]:
    """``n`` distinct JPEGs in ``folder``; returns {file name: SHA-256}."""
    folder.mkdir()
    shas = {}
    for i in range(n):
        data = jpeg(200 + 4 * i, 150, seed=i)
        (folder / f"{i:03d}.jpg").write_bytes(data)
        shas[f"{i:03d}.jpg"] = hashlib.sha256(data).hexdigest()
    return shas


def _cli(*args: str) -> list[str]:
    # content names: these tests pick the uploads to hold by the SHA-256 in the object's name
    # (a folder's default layout is mirror since issue 12)
    return [sys.executable, "-m", "cli", "run", *args, "--layout", "content", "-q"]


def _start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.PIPE)


def _ok_rows(catalog: Path) -> list[sqlite3.Row]:
    if not catalog.exists():
        return []
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM items WHERE status = 'ok'").fetchall()
    except sqlite3.OperationalError:  # the schema is being created
        return []


def _wait_ok_rows(catalog: Path, n: int, deadline: float = 60) -> list[sqlite3.Row]:
    """Poll the real catalog until ``n`` rows are committed ok (bounded in time)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        rows = _ok_rows(catalog)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} ok rows committed within {deadline} s")


def _objects_of(row: sqlite3.Row) -> set[str]:
    paths = {t["path"] for t in json.loads(row["thumbnails"] or "[]")}
    return paths | ({row["original_path"]} if row["original_path"] else set())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run and its workers (like a power cut); return once none of them is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    end = time.monotonic() + 30
    while _group_alive(proc.pid):
        assert time.monotonic() < end, "workers outlived SIGKILL"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


def test_run_to_s3_writes_the_same_objects_and_rows_as_a_local_run(
    s3: Any, server: HTTPServer, tmp_path: Path
) -> None:
    manifest = serve_manifest(server, tmp_path, images=5)
    common = ["--procs", "1", "--shard-size", "3", "-q"]
    runner = CliRunner()
    local = tmp_path / "local"
    assert (
        runner.invoke(main, ["run", "--allow-private", str(manifest), "--out", str(local), *common]).exit_code
        == 0
    )
    catalog = tmp_path / "driver" / "run1.sqlite"
    args = [
        "run",
        "--allow-private",
        str(manifest),
        "--out",
        "s3://bucket/run1",
        "--catalog",
        str(catalog),
        *common,
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output

    assert catalog_rows(catalog) == catalog_rows(local / "catalog.sqlite")
    s3.invalidate_cache()
    remote = {
        key.removeprefix("bucket/run1/"): hashlib.sha256(s3.cat_file(key)).hexdigest()
        for key in s3.find("bucket/run1")
    }
    assert remote == stored_files(local) != {}  # no temp objects, nothing else

    # Resume against the object store: every shard is done, nothing is fetched again.
    hits = len(server.log)
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(server.log) == hits

    # status and export take the driver's catalog file when OUT is not a local folder.
    status = runner.invoke(main, ["status", str(catalog), "--json"])
    counts = json.loads(status.output)["by_status"]
    assert status.exit_code == 0 and counts == {"ok": 6, "failed": 2, "invalid": 1}
    exported = runner.invoke(main, ["export", str(catalog), "-f", "jsonl"]).output.splitlines()
    assert [json.loads(line)["key"] for line in exported] == [r["key"] for r in catalog_rows(catalog)]


def test_missing_bucket_stops_the_run(s3: Any, server: HTTPServer, tmp_path: Path) -> None:
    manifest = serve_manifest(server, tmp_path, images=2)
    args = [
        "run",
        "--allow-private",
        str(manifest),
        "--out",
        "s3://no-such-bucket/run",
        "--catalog",
        str(tmp_path / "c.sqlite"),
    ]
    result = CliRunner().invoke(main, [*args, "--procs", "1", "-q"])
    assert result.exit_code == 1
    assert "Error: cannot write to s3://no-such-bucket/run: FileNotFoundError" in result.output


def test_memory_store_writes_whole_objects_under_content_names() -> None:
    store = open_store("memory://pipeline-test/run")
    fs = fsspec.filesystem("memory")
    rel = store.thumb_relpath(SHA, 256, "jpg")
    assert not store.exists(rel)
    with store.atomic_path(rel) as tmp:
        assert tmp.is_file()  # an anonymous memory file (pass the format, there is no suffix)
        tmp.write_bytes(b"thumb")
    assert not tmp.exists()  # the local file is gone once read for the upload
    uploads = store.uploads()  # this thread's uploads still under way (None: all done already)
    assert (uploads is None or uploads.result(timeout=10) is None) and store.uploads() is None
    assert store.exists(rel) and fs.cat_file(f"/pipeline-test/run/{rel}") == b"thumb"
    store.write_bytes(store.original_relpath(SHA, "png"), b"original")
    store.write_bytes(store.original_relpath(SHA, "png"), b"ignored: content-addressed, already there")
    store.flush()
    assert fs.cat_file(f"/pipeline-test/run/originals/ab/{SHA}.png") == b"original"


def test_an_object_store_is_not_a_local_store() -> None:
    """Issue 15: ``FsspecStore`` was a local ``Store`` rooted at $TMPDIR whose ``path()`` raised
    ``TypeError``. It shares the names and the interface only: nothing of it points at a folder."""
    from pipeline.store.base import ContentStore
    from pipeline.store.local import Store

    store = open_store("memory://pipeline-test/kind")
    assert isinstance(store, ContentStore) and not isinstance(store, Store)
    assert [name for name in ("path", "root", "_tmp", "_new_temp") if hasattr(store, name)] == []
    assert store.thumb_relpath(SHA, 256, "jpg") == Store(ROOT).thumb_relpath(SHA, 256, "jpg")


def test_memory_store_failed_write_leaves_nothing() -> None:
    store = open_store("memory://pipeline-test/failed")
    rel = store.thumb_relpath(SHA, 128, "webp")
    with pytest.raises(RuntimeError), store.atomic_path(rel) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("encoder crashed")
    assert not tmp.exists() and not store.exists(rel)
    for bad in ("../x", "/etc/passwd", ".tmp/x", ""):
        with pytest.raises(ValueError):
            store.exists(bad)


# ---------------------------------------------------------------------------------------------
# Uploads off the image thread (issue 11): no existence checks, several uploads in flight, and
# a row committed only once its objects are in place.


def test_uploads_overlap_without_existence_checks(s3: Any, moto: Any, tmp_path: Path) -> None:
    """One worker, one image thread: its uploads are in the server together (held there until
    four are), and the run asks the store nothing but PUTs (no HEAD, no listing per object)."""
    _images(tmp_path / "in", 12)
    gate = Gate()
    moto.hook = gate
    proc = _start(_cli(str(tmp_path / "in"), "--out", "s3://bucket/run", "--catalog", str(tmp_path / "c.sqlite"),
                       "--procs", "1", "--cpu-threads", "1"))  # fmt: skip
    try:
        overlapped = gate.wait_held(4, timeout=30)
        assert _ok_rows(tmp_path / "c.sqlite") == []  # every upload is held: nothing is finished
    finally:
        gate.release()
        _, stderr = proc.communicate(timeout=60)
    assert overlapped, "uploads of one image thread never overlapped"
    assert proc.returncode == 0, stderr.decode()
    assert len(_ok_rows(tmp_path / "c.sqlite")) == 12
    assert set(moto.counts) == {"PUT"} and moto.counts["PUT"] == 24  # 12 thumbnails + 12 originals
    s3.invalidate_cache()
    assert len(s3.find("bucket/run")) == 24


def test_a_row_is_committed_only_once_its_objects_are_uploaded(s3: Any, moto: Any, tmp_path: Path) -> None:
    """The thumbnail of one image is held at the server: every other row is committed, that
    one is not, and the run does not end, until the upload goes through."""
    shas = _images(tmp_path / "in", 10)
    slow = shas["003.jpg"]
    gate = Gate(hold=lambda path: path.startswith("/bucket/run/thumbs/") and slow in path)
    moto.hook = gate
    catalog = tmp_path / "c.sqlite"
    proc = _start(
        _cli(str(tmp_path / "in"), "--out", "s3://bucket/run", "--catalog", str(catalog), "--procs", "1")
    )
    try:
        assert gate.wait_held(1)
        rows = _wait_ok_rows(catalog, 9)
        assert slow not in {row["sha256"] for row in rows}
        assert proc.poll() is None
    finally:
        gate.release()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    rows = _ok_rows(catalog)
    s3.invalidate_cache()
    stored = {key.removeprefix("bucket/run/") for key in s3.find("bucket/run")}
    assert len(rows) == 10 and set().union(*map(_objects_of, rows)) == stored


def test_killed_run_leaves_nothing_in_tmpdir(s3: Any, moto: Any, tmp_path: Path) -> None:
    """SIGKILL the run while uploads are in flight: nothing of it is left in $TMPDIR, and every
    committed row's objects are in the bucket (the rerun redoes the rest)."""
    _images(tmp_path / "in", 12)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    shas = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "in").iterdir())
    held = set(shas[6:])  # half the images upload, the other half's uploads are in flight when killed
    gate = Gate(hold=lambda path: any(sha in path for sha in held))
    moto.hook = gate
    catalog = tmp_path / "c.sqlite"
    cmd = _cli(str(tmp_path / "in"), "--out", "s3://bucket/run", "--catalog", str(catalog), "--procs", "2")
    proc = _start(cmd, env={"TMPDIR": str(tmpdir)})
    try:
        assert gate.wait_held(2)
    finally:
        _kill_group(proc)
        gate.release()
    assert sorted(os.listdir(tmpdir)) == []
    s3.invalidate_cache()
    stored = {key.removeprefix("bucket/run/") for key in s3.find("bucket/run")}
    rows = _ok_rows(catalog)
    assert set().union(set(), *map(_objects_of, rows)) <= stored
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=90, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert len(_ok_rows(catalog)) == 12


def test_wrong_keys_stop_the_run(s3: Any, moto: Any, server: HTTPServer, tmp_path: Path) -> None:
    """Credentials the store refuses are fatal for the run (exit 1), not a failure per row."""
    manifest = serve_manifest(server, tmp_path, images=3)
    _moto_auth(moto, "0")  # from now on moto checks every signature
    try:
        env = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong"}
        proc = _start(_cli("--allow-private", str(manifest), "--out", "s3://bucket/run",
                           "--catalog", str(tmp_path / "c.sqlite"), "--procs", "1"), env=env)  # fmt: skip
        _, stderr = proc.communicate(timeout=60)
    finally:
        _moto_auth(moto, "inf")
    assert proc.returncode == 1, stderr.decode()
    assert "Error: cannot write to s3://bucket/run: PermissionError" in stderr.decode()
    assert _ok_rows(tmp_path / "c.sqlite") == []
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("SELECT count(*) FROM items WHERE error_class = 'internal'").fetchone()[0] == 0


def _moto_auth(moto: Any, after_requests: str) -> None:
    """moto checks credentials from its ``after_requests``-th request on ("inf": never)."""
    request = urllib.request.Request(
        f"{moto.endpoint}/moto-api/reset-auth", data=after_requests.encode(), method="POST",
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=10).read()


def _write_ten(store: Any) -> None:
    for i in range(10):
        store.write_bytes(store.original_relpath(f"{i:02x}" + "0" * 62, "bin"), bytes([i]) * 10_000)


def test_uploads_are_bounded_in_count_and_bytes(s3: Any, moto: Any) -> None:
    """The store keeps at most ``max_uploads`` objects and ``max_upload_bytes`` in flight: the
    server never has more inside at once, however fast the image thread writes."""
    from pipeline.store.remote import FsspecStore

    for limits, peak in (({"max_uploads": 3}, 3), ({"max_upload_bytes": 25_000}, 2)):
        moto.reset_counts()
        gate = Gate(prefix="/bucket/")
        moto.hook = gate
        store = FsspecStore("s3://bucket/bounded", **limits)
        written = threading.Thread(target=_write_ten, args=(store,))
        written.start()
        try:
            assert gate.wait_held(peak)
        finally:
            gate.release()
            written.join(timeout=30)
        store.flush()
        assert moto.counts["PUT"] == 10 and moto.peak == peak


def test_a_failed_upload_is_a_storage_error(s3: Any) -> None:
    """An upload fails on the store's own threads; the writer learns it from ``flush`` or its
    next write, as a ``StorageError`` naming the store."""
    store = open_store("s3://no-such-bucket-here/run")
    store.write_bytes(store.original_relpath(SHA, "png"), b"x")
    with pytest.raises(StorageError, match="cannot write to s3://no-such-bucket-here/run: FileNotFoundError"):
        store.flush()
    with pytest.raises(StorageError, match="cannot write to s3://no-such-bucket-here/run: FileNotFoundError"):
        store.write_bytes(store.original_relpath(SHA, "jpg"), b"y")
