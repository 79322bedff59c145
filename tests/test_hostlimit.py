"""Per-host limits for the whole machine (pipeline/net/hosttable.py, hostlimit.py): real worker
processes, real servers on several ports of 127.0.0.1 (one host each), the real CLI.

Each server records what one host sees: connections open at once (one request each: the
test server closes every connection after its response), the start of every request and
which worker process sent it (found through /proc). The runs are shaped so that both
worker processes fetch from every host at the same time: two shards larger than a worker
takes at once (a worker asks for its next shard only when fewer than 64 of its rows wait),
and no response leaves a server before requests from both workers have arrived.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg
from procfs import socket_owner
from rawserver import RawServer, Request, response
from test_faults_process import descendants

from pipeline.cli import main
from pipeline.config import FetchOptions, RunConfig
from pipeline.errors import UsageError
from pipeline.models import FetchResult, Shard
from pipeline.net import hostlimit
from pipeline.net.fetch import fetch_url
from pipeline.net.hosttable import HostTable, TableHandle
from pipeline.net.session import make_session
from pipeline.schedule.executors import LocalExecutor

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes through /proc"),
]
ROOT = Path(__file__).resolve().parent.parent
IMAGES = [jpeg(48, 32, seed=s) for s in range(4)]
HOLD_FOR_BOTH_S = 20.0  # bound on the wait for the second worker's first request


class Seen:
    """Which worker processes sent requests, machine-wide and per host."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.by_host: dict[int, set[int]] = {}

    def note(self, srv: RawServer, request: Request) -> None:
        host = self.by_host.setdefault(srv.port, set())
        if len(host) < 2:  # a /proc scan per request costs ms: stop once both are known
            pid = socket_owner(request.peer_port, descendants(os.getpid()))
            if pid is not None:
                host.add(pid)
                self.pids.add(pid)

    async def both_workers(self, since: float) -> None:
        while len(self.pids) < 2 and time.monotonic() - since < HOLD_FOR_BOTH_S:
            await asyncio.sleep(0.005)


def image_response(request: Request) -> bytes:
    n = int(request.query.get("n", ["0"])[0])
    return response(200, IMAGES[n % len(IMAGES)], headers={"Content-Type": "image/jpeg"})


def held_images(srv: RawServer, seen: Seen, *, limit: int, hold: float):
    """Answers only once both workers have sent requests, then once more than ``limit``
    requests are open here (so a broken limit shows) or after ``hold`` seconds (so that
    ``limit`` requests can pile up here: the limit is used, not just obeyed by slowness)."""

    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        arrived = time.monotonic()
        seen.note(srv, request)
        await seen.both_workers(arrived)
        held = time.monotonic()
        while srv.active <= limit and time.monotonic() - held < hold:
            await asyncio.sleep(0.005)
        writer.write(image_response(request))

    return route


def answer_images(srv: RawServer, seen: Seen):
    """Answers at once: while the first worker's requests wait at the held hosts (and fill
    its --concurrency), the second worker's get through here, and the holds end."""

    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        seen.note(srv, request)
        writer.write(image_response(request))

    return route


def redirect_to(srv: RawServer, target: RawServer, seen: Seen):
    """Like ``answer_images``, with a redirect to ``target`` instead of an image."""

    async def route(request: Request, writer: asyncio.StreamWriter) -> None:
        seen.note(srv, request)
        n = request.query.get("n", ["0"])[0]
        writer.write(response(302, headers={"Location": target.url(f"/img?n={n}")}))

    return route


def run_cli(manifest: Path, out: Path, *options: str) -> None:
    args = ["run", str(manifest), "--out", str(out), "--allow-private", "-q", "--procs", "2", *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def catalog_statuses(out: Path) -> set[str]:
    with sqlite3.connect(out / "catalog.sqlite") as db:
        return {r[0] for r in db.execute("SELECT DISTINCT status FROM items")}


# ---------------------------------------------------------------------------------------------
# The whole run


def test_per_host_holds_across_worker_processes_and_redirect_hops(tmp_path: Path) -> None:
    """--procs 2 --per-host 2: no host ever has more than 2 requests open, each reaches 2, and
    both workers fetch from each. Host C is reached only through redirects from host R, so
    its limit holds only if every hop takes a slot of its own host."""
    seen = Seen()
    with RawServer({}) as a, RawServer({}) as b, RawServer({}) as c, RawServer({}) as r:
        for srv in (a, b, c):
            srv.routes["/img"] = held_images(srv, seen, limit=2, hold=0.05)
        r.routes["/r"] = redirect_to(r, c, seen)
        # Two shards of 100 rows, hosts interleaved: each shard holds ~33 rows of each host.
        urls = [(a.url("/img"), b.url("/img"), r.url("/r"))[i % 3] + f"?n={i}" for i in range(200)]
        manifest = tmp_path / "m.txt"
        manifest.write_text("\n".join(urls) + "\n")
        run_cli(manifest, tmp_path / "out", "--per-host", "2", "--shard-size", "100", "--concurrency", "16")
        saw = {name: (srv.max_active, len(srv.log)) for name, srv in zip("abcr", (a, b, c, r))}
    assert catalog_statuses(tmp_path / "out") == {"ok"}
    assert saw == {"a": (2, 67), "b": (2, 67), "c": (2, 66), "r": (saw["r"][0], 66)}
    assert saw["r"][0] <= 2
    for srv in (a, b, c):
        assert len(seen.by_host[srv.port]) == 2, seen.by_host  # both workers fetched from it


def test_per_host_rate_holds_across_worker_processes(tmp_path: Path) -> None:
    """--procs 2 --per-host-rate 40: the requests one host receives, from both workers, start
    no faster than 40/s machine-wide: the j-th after the i-th arrives at least (j-i)/40 s
    later, less a slack of 0.5 s for the i-th reaching the server late. Caps per process
    would let the ~80 requests of both workers running side by side in over ~1 s where 2 s
    are due (a shortfall of ~1 s)."""
    rate, slack = 40.0, 0.5
    seen = Seen()
    h1, h2, door = RawServer({}), RawServer({}), RawServer({})
    with h1, h2, door:
        for srv in (h1, h2):
            srv.routes["/img"] = held_images(srv, seen, limit=10**6, hold=0.0)
        door.routes["/img"] = answer_images(door, seen)
        urls = [(h1, h2, door)[i % 3].url("/img") + f"?n={i}" for i in range(300)]
        manifest = tmp_path / "m.txt"
        manifest.write_text("\n".join(urls) + "\n")
        options = ["--per-host-rate", str(rate), "--shard-size", "150", "--concurrency", "16"]
        run_cli(manifest, tmp_path / "out", *options)
        arrivals = {srv.port: sorted(req.arrived for req in srv.log) for srv in (h1, h2, door)}
    assert catalog_statuses(tmp_path / "out") == {"ok"}
    for port, times in arrivals.items():
        assert len(times) == 100
        assert len(seen.by_host[port]) == 2, seen.by_host
        shortfall = max((j - i) / rate - (times[j] - times[i]) for i in range(100) for j in range(i + 1, 100))
        assert shortfall <= slack, (port, shortfall)


def test_a_killed_worker_gives_back_its_host_slots(tmp_path: Path) -> None:
    """--per-host 1: the worker holding the host's only slot is SIGKILLed mid-request. Its
    slot must come back, or every later request to that host waits forever (the wait for a
    host slot is not bounded by --timeout)."""
    killed: list[int] = []

    async def die_once(request: Request, writer: asyncio.StreamWriter) -> None:
        if not killed:
            pid = socket_owner(request.peer_port, descendants(os.getpid()))
            assert pid is not None and pid != os.getpid()
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
            return
        writer.write(image_response(request))

    async def image(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(image_response(request))

    with RawServer({"/img": image, "/die": die_once}) as srv:
        urls = [f"{srv.url('/img')}?n={i}" for i in range(8)]
        urls[1] = f"{srv.url('/die')}?n=1"
        manifest = tmp_path / "m.txt"
        manifest.write_text("\n".join(urls) + "\n")
        run_cli(manifest, tmp_path / "out", "--per-host", "1", "--shard-size", "4")
    assert len(killed) == 1
    assert catalog_statuses(tmp_path / "out") == {"ok"}


# ---------------------------------------------------------------------------------------------
# One process, the table installed here: waiting for a slot is not part of the deadline


@pytest.fixture
def machine_table() -> Iterator[HostTable]:
    """This test process as a worker of a table (what the pool initializer does)."""
    table = HostTable.create(1)
    hostlimit.install(table.handle)
    try:
        yield table
    finally:
        hostlimit.uninstall()
        table.destroy()


OPEN = FetchOptions(retries=0, allow_private=True)


def fetch_all(urls: list[str], options: FetchOptions) -> list[FetchResult]:
    async def main_() -> list[FetchResult]:
        async with make_session(options) as session:
            return list(await asyncio.gather(*(fetch_url(session, u, options) for u in urls)))

    return asyncio.run(main_())


@pytest.mark.parametrize("case", ["first hop", "redirect hop", "rate"])
def test_waiting_for_a_host_slot_does_not_eat_the_deadline(machine_table: HostTable, case: str) -> None:
    """The timeout is 1 s and one response takes 0.2 s; 7 requests one at a time (per_host 1),
    or starts 0.25 s apart (rate 4/s, 5 requests): the last one waits over 1 s for its turn,
    and still succeeds. A request made through a redirect waits at its second hop."""

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2 if case != "rate" else 0.0)
        writer.write(image_response(request))

    async def hop(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(302, headers={"Location": target.url(f"/img?n={request.query['n'][0]}")}))

    with RawServer({"/img": slow}) as target, RawServer({"/r": hop}) as first:
        if case == "rate":
            options, count = replace(OPEN, timeout=1.0, per_host_rate=4.0), 5
        else:
            options, count = replace(OPEN, timeout=1.0, per_host=1), 7
        base = first.url("/r") if case == "redirect hop" else target.url("/img")
        results = fetch_all([f"{base}?n={i}" for i in range(count)], options)
        most_open = target.max_active
    assert [r.error_message for r in results] == [None] * count
    if case != "rate":
        assert most_open == 1


def test_rate_cap_without_a_table_holds_per_process() -> None:
    """No table installed (a Ray worker, a script): --per-host-rate still spaces this
    process's requests. 6 starts at 10/s span at least 0.5 s; slack 0.25 s."""
    assert hostlimit.current_gate() is None

    async def image(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(image_response(request))

    with RawServer({"/img": image}) as srv:
        results = fetch_all([f"{srv.url('/img')}?n={i}" for i in range(6)], replace(OPEN, per_host_rate=10.0))
        times = sorted(r.arrived for r in srv.log)
    assert [r.error_message for r in results] == [None] * 6
    assert times[-1] - times[0] >= 0.5 - 0.25


# ---------------------------------------------------------------------------------------------
# The table itself, with real processes

# A worker started by hand, driven line by line through stdin ("take LIMIT", "fast LIMIT",
# "queued LIMIT", "give", "lock"), answering each line. It has a resource tracker of its
# own, which would remove the segment when the child is killed: pool workers share the
# parent's, so this one forgets the segment.
CHILD = """
import sys, time
from multiprocessing import resource_tracker
from pipeline.net.hostlimit import HostGate
from pipeline.net.hosttable import HostTable, TableHandle
handle = TableHandle(*sys.argv[1:3], *map(int, sys.argv[3:5]))
gate = HostGate(HostTable.attach(handle))
resource_tracker.unregister("/" + handle.shm_name, "shared_memory")
table = gate.table
bucket = table.bucket("example.com", 443)
for line in sys.stdin:
    what, *arg = line.split()
    if what == "fast":
        print(table.take(bucket, int(arg[0]), 0.0)[0] is not None, flush=True)
    elif what == "queued":
        print(table.take(bucket, int(arg[0]), 0.0, time.monotonic())[0] is not None, flush=True)
    elif what == "give":
        gate.release(bucket)
        print("given", flush=True)
    elif what == "lock":
        table._lock.__enter__()
        print("locked", flush=True)
"""


class Child:
    """Another worker process of the table."""

    def __init__(self, handle: TableHandle) -> None:
        shape = [handle.shm_name, handle.lock_path, str(handle.buckets), str(handle.rows)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *shape], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()  # synchronise on the child, not on time

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()  # reaped: its pid is gone


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


@pytest.fixture
def table() -> Iterator[HostTable]:
    parent = HostTable.create(2)
    try:
        yield parent
    finally:
        parent.destroy()


def test_slots_of_a_killed_process_are_reclaimed(table: HostTable, children: list[Child]) -> None:
    assert table.handle is not None
    children.append(child := Child(table.handle))
    assert [child.ask("fast 100"), child.ask("fast 100")] == ["True", "True"]
    me = HostTable.attach(table.handle)  # another worker of the same table
    try:
        bucket = me.bucket("example.com", 443)
        assert table.in_flight(bucket) == 2
        assert me.take(bucket, 2, 0.0)[0] is None  # the limit counts the other process
        child.kill()
        assert table.in_flight(bucket) == 2  # a dead process's slots stay taken ...
        assert table.reclaim() == [child.proc.pid]  # ... until its row is reclaimed
        assert table.in_flight(bucket) == 0
        assert me.take(bucket, 2, 0.0)[0] is not None
        assert table.reclaim() == []  # live rows are left alone
        assert table.in_flight(bucket) == 1
    finally:
        me.close()


def test_a_new_worker_takes_over_the_row_of_a_dead_one(table: HostTable, children: list[Child]) -> None:
    """A worker attaching when every row is taken finds a dead worker's row and zeroes it."""
    assert table.handle is not None
    for _ in range(table.rows):
        children.append(child := Child(table.handle))
        assert child.ask("fast 100") == "True"
    bucket = table.bucket("example.com", 443)
    assert table.in_flight(bucket) == table.rows
    children[0].kill()
    late = HostTable.attach(table.handle)
    assert table.in_flight(bucket) == table.rows - 1
    late.close()


def test_the_lock_is_released_when_its_holder_dies(table: HostTable, children: list[Child]) -> None:
    assert table.handle is not None
    children.append(child := Child(table.handle))
    assert child.ask("lock") == "locked"
    fd = os.open(table.handle.lock_path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the child
        child.kill()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel released it
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_a_freed_slot_goes_to_the_process_that_waited_longest(
    table: HostTable, children: list[Child]
) -> None:
    """Limit 1. The child holds the slot; we wait. When the child gives it back, the child
    cannot take it again, neither at once nor as a waiter of its own: it is our turn."""
    assert table.handle is not None
    children.append(child := Child(table.handle))
    me = HostTable.attach(table.handle)
    try:
        bucket = me.bucket("example.com", 443)
        assert child.ask("fast 1") == "True"
        since = time.monotonic()
        assert me.take(bucket, 1, 0.0, since)[0] is None  # full: we are recorded as waiting
        assert child.ask("give") == "given"
        assert child.ask("fast 1") == "False"
        assert child.ask("queued 1") == "False"  # its waiter came later than ours
        assert me.take(bucket, 1, 0.0, since)[0] is not None
    finally:
        me.close()


def test_a_release_in_another_process_wakes_our_waiter(
    table: HostTable, children: list[Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the first waiter's poll switched off, only the other process's wake-up datagram
    can tell us the slot is free (bounded by a 10 s wait)."""
    assert table.handle is not None
    monkeypatch.setattr(hostlimit, "_POLL_WITH_WAKEUPS", None)
    children.append(child := Child(table.handle))
    gate = hostlimit.HostGate(HostTable.attach(table.handle))

    async def wait_for_the_slot() -> None:
        bucket = gate.table.bucket("example.com", 443)
        waiting = asyncio.create_task(gate.acquire(bucket, 1, 0.0))
        while gate.table.next_row(bucket) != gate.table.row:  # recorded as waiting
            await asyncio.sleep(0.01)
        assert not waiting.done()
        assert await asyncio.to_thread(child.ask, "give") == "given"
        await asyncio.wait_for(waiting, 10)

    try:
        assert child.ask("fast 1") == "True"
        asyncio.run(wait_for_the_slot())
    finally:
        gate.close()


def test_rate_reservations_are_one_interval_apart(table: HostTable) -> None:
    """GCRA with a burst of 1: each slot taken reserves the next start, 1/rate later."""
    assert table.handle is not None
    me = HostTable.attach(table.handle)
    try:
        bucket = me.bucket("example.com", 443)
        starts = [me.take(bucket, 100, 0.5, time.monotonic())[0] for _ in range(4)]
        me.set_waiting(bucket, 0.0)
        assert me.take(bucket, 100, 0.5)[0] is None  # would have to wait: not taken at once
        assert me.in_flight(bucket) == 4
    finally:
        me.close()
    assert all(s is not None for s in starts)
    gaps = [b - a for a, b in itertools.pairwise(starts)]  # type: ignore[operator]
    assert gaps == pytest.approx([0.5, 0.5, 0.5])


@pytest.mark.parametrize("end", ["done", "ctrl-c"])
def test_the_table_is_removed_when_the_run_ends(tmp_path: Path, end: str) -> None:
    """The executor's table exists while shards are drawn, and is gone when the run is
    done or interrupted (Ctrl-C, or any exception)."""
    executor = LocalExecutor(2)
    names: list[str] = []

    def no_shards() -> Iterator[Shard]:
        hosts = executor._hosts  # the table is private to the executor: its name is read here only
        assert hosts is not None and hosts.handle is not None
        names.append(hosts.handle.shm_name)
        assert os.path.exists(f"/dev/shm/{names[0]}")
        if end == "ctrl-c":
            raise KeyboardInterrupt
        yield from ()

    if end == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            list(executor.run(no_shards(), RunConfig(out=tmp_path)))
    else:
        assert list(executor.run(no_shards(), RunConfig(out=tmp_path))) == []
    assert names and not os.path.exists(f"/dev/shm/{names[0]}")


# ---------------------------------------------------------------------------------------------
# Options


def test_per_host_rate_is_validated_and_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--per-host-rate must be positive"):
        FetchOptions(per_host_rate=0)
    base = RunConfig(out=tmp_path)
    capped = replace(base, fetch=replace(base.fetch, per_host_rate=2.5))
    assert capped.fingerprint_options() == base.fingerprint_options()  # it changes no result
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--per-host-rate", "-1"])
    assert result.exit_code == 2
    assert "--per-host-rate must be positive" in result.output
