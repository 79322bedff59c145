"""The Ray executor on a real local Ray (two CPUs), started once for the module."""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_helpers import catalog_rows, serve_manifest, shard_counts, stored_files
from conftest import jpeg
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cli import main
from pipeline.runner import RunSummary, run

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # Ray workers are separate processes: they must import `pipeline` from this checkout
    # even when it is only on the driver's sys.path (PYTHONPATH=.), not installed.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_run_gives_the_same_rows_and_files_as_the_local_executor(
    server: HTTPServer, tmp_path: Path
) -> None:
    manifest = serve_manifest(server, tmp_path)
    common = ["--shard-size", "2", "--procs", "2", "-q"]
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--allow-private", str(manifest), "--out", str(tmp_path / "local"), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main, ["run", "--allow-private", str(manifest), "--out", str(tmp_path / "ray"), "--executor", "ray", *common]
    )
    assert result.exit_code == 0, result.output

    local, remote = tmp_path / "local", tmp_path / "ray"
    assert catalog_rows(remote / "catalog.sqlite") == catalog_rows(local / "catalog.sqlite")
    assert shard_counts(remote / "catalog.sqlite") == shard_counts(local / "catalog.sqlite")
    assert stored_files(remote) == stored_files(local) != {}
    with sqlite3.connect(remote / "catalog.sqlite") as db:  # the shards really ran in Ray workers
        pids = {pid for (pid,) in db.execute("SELECT worker_pid FROM shards")}
    assert os.getpid() not in pids and all(_was_ray_worker(pid) for pid in pids)


def _was_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except FileNotFoundError:
        return True  # an idle worker Ray has since reaped


def _running_shard_pids() -> list[int]:
    """Processes whose title says they run our task right now (Ray sets ``ray::<task>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::run_shard"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _run_killing_workers(
    server: HTTPServer, tmp_path: Path, *, kills: int, max_attempts: int
) -> tuple[RunSummary, list[int], int]:
    """One shard whose first ``kills`` attempts hang on /hang and get their worker SIGKILLed."""
    from pipeline.ray_executor import RayExecutor

    arrived: queue.Queue[int] = queue.Queue()
    release = threading.Event()
    calls = []

    def hang(request: Request) -> Response:
        calls.append(1)
        attempt = len(calls)
        arrived.put(attempt)
        if attempt <= kills:
            release.wait(timeout=60)  # the worker is killed while this request is open
        return Response(jpeg(300, 200, seed=42), 200, content_type="image/jpeg")

    server.expect_request("/hang").respond_with_handler(hang)
    for i in range(2):
        server.expect_request(f"/ok/{i}").respond_with_data(jpeg(200, 150, seed=i), content_type="image/jpeg")
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(server.url_for(p) + "\n" for p in ("/ok/0", "/hang", "/ok/1")))

    killed: list[int] = []
    executor = RayExecutor(max_attempts=max_attempts)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run, manifest, out=tmp_path / "out", executor=executor, retries=0, allow_private=True)
        try:
            for _ in range(kills):
                arrived.get(timeout=60)  # an attempt is inside the shard, holding /hang open
                pids = _running_shard_pids()
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
        finally:
            release.set()
        summary = future.result(timeout=120)
    return summary, killed, len(calls)


def test_a_task_whose_worker_is_killed_is_retried(server: HTTPServer, tmp_path: Path) -> None:
    summary, killed, calls = _run_killing_workers(server, tmp_path, kills=1, max_attempts=3)
    assert summary.by_status == {"ok": 3} and summary.complete
    assert calls == 2  # the second attempt fetched /hang again and finished
    with sqlite3.connect(summary.catalog) as db:
        (pid,) = db.execute("SELECT worker_pid FROM shards").fetchone()
    assert pid != killed[0]


def test_a_shard_that_keeps_losing_its_worker_is_recorded_not_dropped(
    server: HTTPServer, tmp_path: Path
) -> None:
    summary, killed, calls = _run_killing_workers(server, tmp_path, kills=2, max_attempts=2)
    assert calls == 2 and len(set(killed)) == 2
    assert summary.rows == 3 and summary.by_error == {"internal": 3} and summary.complete
    with sqlite3.connect(summary.catalog) as db:
        messages = {m for (m,) in db.execute("SELECT error_message FROM items")}
    (message,) = messages
    assert message.startswith("ray: ") and message.endswith("(shard tried 2 times)")
