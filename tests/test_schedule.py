"""Rows, not shards, are what holds a worker: a URL that never answers holds one download
slot, its shard mates are committed as they finish, a manifest smaller than a shard spreads
over every worker, and a run killed while its shards wait on such URLs resumes without
fetching any finished row again. Real worker processes, real servers, the real catalog.

Every wait is bounded; a test that waits out its bound fails on what it saw.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import encode, jpeg, photo
from rawserver import RawServer, Request, response
from test_faults_process import assert_complete, assert_consistent, cli_cmd, run_cli, spawn, wait_until

from pipeline import run
from pipeline.schedule.executors import LocalExecutor
from pipeline.worker.loop import Finished

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spawned workers, /proc"),
]
IMAGE = jpeg(64, 48, seed=7)
HOLD_S = 30.0  # the longest any held response waits


async def _img(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, IMAGE, headers={"Content-Type": "image/jpeg"}))


def _held_until(release: threading.Event):
    """A route that answers only once ``release`` is set (or after HOLD_S): a silent server."""

    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        deadline = time.monotonic() + HOLD_S
        while not release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        writer.write(response(200, IMAGE, headers={"Content-Type": "image/jpeg"}))

    return route


def _committed(catalog: Path) -> tuple[int, int]:
    """(rows, shards done) in the catalog, read as another process would."""
    if not catalog.exists():
        return 0, 0
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            shards = db.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
            return rows, shards
    except sqlite3.OperationalError:  # created but no schema yet
        return 0, 0


def test_rows_of_a_shard_are_committed_while_one_of_its_urls_hangs(tmp_path: Path) -> None:
    """One shard of 24 rows; row 0 never answers until its 23 shard mates are in the
    catalog. With shards as the unit of commit nothing is committed before row 0 ends."""
    out = tmp_path / "out"
    release = threading.Event()
    seen: list[tuple[int, int]] = []

    def watch() -> None:
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and _committed(out / "catalog.sqlite")[0] < 23:
            time.sleep(0.05)
        seen.append(_committed(out / "catalog.sqlite"))
        release.set()

    with RawServer({"/img": _img, "/held": _held_until(release)}) as srv:
        manifest = tmp_path / "m.txt"
        urls = [srv.url("/held")] + [f"{srv.url('/img')}?n={i}" for i in range(1, 24)]
        manifest.write_text("\n".join(urls) + "\n")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        summary = run(manifest, out=out, procs=2, allow_private=True)
        watcher.join(timeout=5)
    assert seen == [(23, 0)]  # every other row committed, the shard not yet done
    assert summary.by_status == {"ok": 24} and summary.complete


def test_rows_finished_before_a_silent_url_reach_the_catalog_while_every_slot_waits(tmp_path: Path) -> None:
    """One download slot, 200 rows (more than the parent's window, so the process is always
    being fed), and one URL that answers only when released. Once it holds the slot nothing
    can start; the rows that finished before it must still be committed while it waits. They
    were held in the worker until the silent URL ended (a read timeout later): a kill then
    lost them, and the progress display stood still."""
    out = tmp_path / "out"
    release = threading.Event()
    with RawServer({"/img": _img, "/held": _held_until(release)}) as srv:
        manifest = tmp_path / "m.txt"
        urls = [f"{srv.url('/img')}?n={i}" for i in range(200)]
        urls[6] = srv.url("/held")
        manifest.write_text("\n".join(urls) + "\n")
        cmd = cli_cmd(manifest, out, "--procs", "1", "--concurrency", "1", "--shard-size", "200", "--read-timeout", "60")
        proc = spawn(cmd)
        try:
            wait_until(lambda: len(srv.requests("/held")) == 1, deadline=60, what="the silent URL's request")
            answered = len(srv.requests("/img"))  # all of them before it: it holds the only slot
            wait_until(
                lambda: _committed(out / "catalog.sqlite")[0] >= answered, deadline=HOLD_S / 2,
                what=f"the {answered} rows answered before the silent URL committed",
            )  # fmt: skip
            assert len(srv.requests("/img")) == answered  # nothing else started meanwhile
        finally:
            release.set()
            _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    assert _committed(out / "catalog.sqlite") == (200, 1)


class _RecordingExecutor(LocalExecutor):
    """The local executor, noting which worker process reported each row (observation only)."""

    def __init__(self, procs: int) -> None:
        super().__init__(procs)
        self.rows_by_pid: Counter[int] = Counter()

    def _accept(self, finished: Finished) -> Finished:
        accepted = super()._accept(finished)
        self.rows_by_pid[accepted.worker_pid] += len(accepted.items)
        return accepted


def test_a_folder_smaller_than_a_shard_spreads_over_every_worker(tmp_path: Path) -> None:
    """48 photos, one shard: both worker processes do part of them. With the shard as the
    unit of scheduling one process did the whole folder while the other sat idle. (How even
    the split is depends on the CPU each process gets on a shared machine: bench/folder.py
    measures it; here only that both worked.)"""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(48):
        (folder / f"p{i:02d}.jpg").write_bytes(encode(photo(1200, 900, seed=i), "JPEG", quality=90))
    executor = _RecordingExecutor(2)
    summary = run(folder, out=tmp_path / "out", executor=executor)
    assert summary.by_status == {"ok": 48} and summary.complete
    assert len(executor.rows_by_pid) == 2 and min(executor.rows_by_pid.values()) > 0, executor.rows_by_pid


@pytest.mark.slow
def test_kill_while_every_shard_waits_on_a_silent_url_then_resume_fetches_only_those(tmp_path: Path) -> None:
    """Three shards, each with one URL that never answers. Once every other row is committed,
    kill -9 the whole tree: those rows are in the catalog (no shard is done), and the rerun
    fetches the three silent URLs again and nothing else."""
    release = threading.Event()
    with RawServer({"/img": _img, "/hang": _held_until(release)}) as srv:
        manifest = tmp_path / "m.txt"
        urls = [f"{srv.url('/img')}?n={i}" for i in range(30)]
        for shard in range(3):
            urls[shard * 10 + 4] = f"{srv.url('/hang')}?n={shard}"
        manifest.write_text("\n".join(urls) + "\n")
        out = tmp_path / "out"
        cmd = cli_cmd(manifest, out, "--procs", "2", "--shard-size", "10", "--read-timeout", "60")
        proc = spawn(cmd, start_new_session=True)
        try:
            wait_until(lambda: _committed(out / "catalog.sqlite")[0] >= 27, deadline=60, what="27 rows committed")
            assert len(srv.requests("/hang")) == 3  # all three still waiting
            os.killpg(proc.pid, signal.SIGKILL)  # parent and workers, like a power cut
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        assert _committed(out / "catalog.sqlite") == (27, 0)
        rows = assert_consistent(out, total=30)
        assert sorted(rows) == [r for r in range(30) if r % 10 != 4]
        fetched_before = len(srv.requests("/img"))
        release.set()
        rerun = run_cli(cmd)
        assert rerun.returncode == 0, rerun.stderr
        assert len(srv.requests("/img")) == fetched_before  # no finished row fetched again
        assert len(srv.requests("/hang")) == 6  # the three silent ones, once more each
    assert_complete(out, 30)
