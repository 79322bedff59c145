"""The Ray executor on a real local Ray (two CPUs), started once for the module."""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_helpers import catalog_rows, serve_manifest, shard_counts, stored_files
from conftest import jpeg
from procfs import socket_owner
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.cli import main
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
    # The kernel's name of the process: Ray titles its workers ``ray::<actor class>``, and the
    # name outlives the cmdline (empty once the process is a zombie: actors are killed at the
    # end of the run, so one may still be exiting here).
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("ray::")
    except FileNotFoundError:
        return True  # an actor Ray has since reaped


def _actor_pids() -> list[int]:
    """Processes whose title says they are one of our actors (Ray sets ``ray::<class>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::RowWorker"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _committed(catalog: Path) -> dict[str, str]:
    """``{url: status}`` of the rows the run has committed so far."""
    if not catalog.exists():
        return {}
    try:
        with closing(sqlite3.connect(catalog, timeout=5)) as db:
            return dict(db.execute("SELECT url, status FROM items"))
    except sqlite3.OperationalError:  # the runner is still creating the tables
        return {}


def _done_shards(catalog: Path) -> int:
    with closing(sqlite3.connect(catalog, timeout=5)) as db:
        return db.execute("SELECT count(*) FROM shards").fetchone()[0]


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _run_killing_actors(
    server: HTTPServer, tmp_path: Path, *, kills: int, max_attempts: int
) -> tuple[RunSummary, list[int], int]:
    """Rows /ok/0, /hang, /ok/1: once the two others are committed, the actor holding /hang
    (found by the client port of its request) is SIGKILLed, on each of the first ``kills``
    attempts; a later attempt is answered."""
    from pipeline.schedule.ray_executor import RayExecutor

    ports: queue.Queue[int] = queue.Queue()
    release = threading.Event()
    calls = []

    def hang(request: Request) -> Response:
        calls.append(1)
        if len(calls) <= kills:
            ports.put(int(request.environ["REMOTE_PORT"]))
            release.wait(timeout=60)  # the actor is killed while this request is open
        return Response(jpeg(300, 200, seed=42), 200, content_type="image/jpeg")

    server.expect_request("/hang").respond_with_handler(hang)
    for i in range(2):
        server.expect_request(f"/ok/{i}").respond_with_data(jpeg(200, 150, seed=i), content_type="image/jpeg")
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(server.url_for(p) + "\n" for p in ("/ok/0", "/hang", "/ok/1")))
    catalog = tmp_path / "out" / "catalog.sqlite"

    killed: list[int] = []
    executor = RayExecutor(max_attempts=max_attempts)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run, manifest, out=tmp_path / "out", executor=executor, retries=0, allow_private=True)
        try:
            for _ in range(kills):
                port = ports.get(timeout=60)  # an attempt at /hang is open
                # Only /hang is held when the actor dies: deaths count against the rows held.
                _wait_until(lambda: list(_committed(catalog).values()).count("ok") == 2)
                pid = socket_owner(port, _actor_pids())
                assert pid is not None and pid not in killed
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        finally:
            release.set()
        summary = future.result(timeout=120)
    return summary, killed, len(calls)


def test_a_row_whose_actor_is_killed_runs_again_on_another(server: HTTPServer, tmp_path: Path) -> None:
    summary, killed, calls = _run_killing_actors(server, tmp_path, kills=1, max_attempts=3)
    assert summary.by_status == {"ok": 3} and summary.complete
    assert calls == 2  # the second attempt fetched /hang again and finished
    with sqlite3.connect(summary.catalog) as db:
        (pid,) = db.execute("SELECT worker_pid FROM shards").fetchone()
    assert pid != killed[0]  # the shard's last row, /hang, ended on another actor


def test_a_row_that_keeps_losing_its_actor_is_recorded_not_dropped(
    server: HTTPServer, tmp_path: Path
) -> None:
    summary, killed, calls = _run_killing_actors(server, tmp_path, kills=2, max_attempts=2)
    assert calls == 2 and len(killed) == 2
    assert summary.rows == 3 and summary.complete
    assert summary.by_status == {"ok": 2, "failed": 1} and summary.by_error == {"internal": 1}
    with sqlite3.connect(summary.catalog) as db:
        ((url, message),) = db.execute("SELECT url, error_message FROM items WHERE status = 'failed'")
    assert url.endswith("/hang")
    assert message.startswith("ray: ") and message.endswith("(tried 2 times)")


def test_rows_that_never_answer_do_not_hold_back_the_others(server: HTTPServer, tmp_path: Path) -> None:
    """Two silent URLs, as many as there are actors, in two batches: a task per batch would
    idle both CPUs; actors keep fetching and the other rows reach the catalog meanwhile."""
    from pipeline.schedule.ray_executor import RayExecutor

    release = threading.Event()

    def silent(request: Request) -> Response:
        release.wait(timeout=60)  # until the test has seen the other rows committed
        return Response(jpeg(120, 90, seed=7), 200, content_type="image/jpeg")

    server.expect_request("/silent/0").respond_with_handler(silent)
    server.expect_request("/silent/1").respond_with_handler(silent)
    paths = [f"/ok/{i}" for i in range(14)]
    paths[0:0], paths[3:3] = ["/silent/0"], ["/silent/1"]  # rows 0 and 3: batches of 2 rows
    for i in range(14):
        server.expect_request(f"/ok/{i}").respond_with_data(jpeg(160, 120, seed=i), content_type="image/jpeg")
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(server.url_for(p) + "\n" for p in paths))
    catalog = tmp_path / "out" / "catalog.sqlite"

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            run, manifest, out=tmp_path / "out", executor=RayExecutor(), procs=2, retries=0,
            timeout=120, read_timeout=120, allow_private=True,
        )  # fmt: skip
        try:
            _wait_until(lambda: list(_committed(catalog).values()).count("ok") == 14)
            assert not any("/silent/" in url for url in _committed(catalog))
            assert _done_shards(catalog) == 0  # the shard waits for its last rows
        finally:
            release.set()
        summary = future.result(timeout=120)
    assert summary.by_status == {"ok": 16} and summary.complete


def test_a_full_disk_stops_the_run_and_its_actors(server: HTTPServer, tmp_path: Path) -> None:
    """A ``StorageError`` raised inside an actor (OUT on a 256 KB tmpfs fills up) is fatal for
    the run, as with the local pool, and the run's actors are killed on the way out."""
    from pipeline.errors import StorageError
    from pipeline.schedule.ray_executor import RayExecutor

    small = tmp_path / "small"
    small.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True, check=False
    ).returncode == 0
    if not mounted:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        for i in range(6):  # ~100 KB each
            body = jpeg(700, 500, seed=100 + i, quality=95)
            server.expect_request(f"/big/{i}").respond_with_data(body, content_type="image/jpeg")
        manifest = tmp_path / "m.txt"
        manifest.write_text("".join(server.url_for(f"/big/{i}") + "\n" for i in range(6)))
        with pytest.raises(StorageError, match="no space left on device") as raised:
            run(
                manifest, out=small / "out", catalog=tmp_path / "catalog.sqlite", executor=RayExecutor(),
                retries=0, allow_private=True,
            )  # fmt: skip
        # The catalog is elsewhere: only an actor writes into OUT, and the driver re-raises.
        assert Path(raised.traceback[-1].path).name == "ray_executor.py"
        _wait_until(lambda: not _actor_pids(), timeout=20)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, check=False)
