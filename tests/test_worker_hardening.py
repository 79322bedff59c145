"""The row loop's books after a batch raises, and out-of-memory decodes, in real processes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from conftest import jpeg
from rawserver import RawServer, Request, response

from pipeline.config import FetchOptions, RunConfig
from pipeline.errors import StorageError
from pipeline.models import ManifestRow, Shard
from pipeline.worker.protocol import collect_rows, feed_rows, init_worker, run_shard

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spawned workers, /sys, RLIMIT_AS"),
]
JPEG = jpeg(64, 48, seed=5)
HOLD_S = 8.0  # a bound on how long the feed may take (under --read-timeout), not a measure
UNWRITABLE = "/sys/pipeline-test-unwritable"  # sysfs: mkdir fails with EPERM, even for root


def _rows(first: int, urls: list[str]) -> tuple[ManifestRow, ...]:
    return tuple(ManifestRow(first + i, first + i + 1, str(first + i), u, u) for i, u in enumerate(urls))


def test_a_batch_that_raises_leaves_the_process_overlapping_batches(tmp_path: Path) -> None:
    """A batch whose first row meets a StorageError ends with its other rows never started.
    The next batch fed to that process must still come back while its downloads are in
    flight (the process asks for more work), not only once all its rows have ended."""
    if Path(UNWRITABLE).exists():
        pytest.skip(f"{UNWRITABLE} exists")
    release = threading.Event()

    async def image(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, JPEG, headers={"Content-Type": "image/jpeg"}))

    async def held(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 3 * HOLD_S)
        writer.write(response(200, JPEG, headers={"Content-Type": "image/jpeg"}))

    fetch = FetchOptions(concurrency=1, allow_private=True)  # rows start one by one
    with RawServer({"/img": image, "/held": held}) as srv, ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker
    ) as pool:
        doomed = Shard(0, _rows(0, [f"{srv.url('/img')}?n={i}" for i in range(100)]))
        with pytest.raises(StorageError):
            pool.submit(run_shard, doomed, RunConfig(out=UNWRITABLE, procs=1, fetch=fetch)).result(timeout=60)
        good = RunConfig(out=tmp_path / "out", procs=1, fetch=FetchOptions(allow_private=True))
        # Only held downloads, so that no finished row can make the feed answer either.
        batch = Shard(1, _rows(100, [f"{srv.url('/held')}?n={n}" for n in range(3)]))
        fed = pool.submit(feed_rows, batch, good)
        try:
            first = fed.result(timeout=HOLD_S)  # before /held answers: the process wants more rows
            answered_early = not release.is_set()
        finally:
            release.set()
        rows = {item.row: item for item in first.items}
        while len(rows) < 3:
            rows.update((item.row, item) for item in pool.submit(collect_rows).result(timeout=60).items)
    assert answered_early and first.items == []  # the held rows were still in flight
    assert {row: item.status.value for row, item in rows.items()} == {100: "ok", 101: "ok", 102: "ok"}


_OUT_OF_MEMORY = r"""
import json, resource, struct, sys, zlib
from pathlib import Path
from pipeline.config import ProcessOptions
from pipeline.store.local import Store
from pipeline.worker.rows import _process
import numpy, PIL.Image, pipeline.image.process  # imported before the cap: only the decode may fail

side = 9000  # RGB: 243 MB of pixels, under --max-pixels (89 M), over the address space left
chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
z = zlib.compressobj(9)
row = b"\x00" * (1 + 3 * side)
idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 96 * 2**20, resource.RLIM_INFINITY))
image, error_class, message = _process(png, ProcessOptions(), Store(Path(sys.argv[1])))
print(json.dumps([error_class and error_class.value, message]))
"""


def test_running_out_of_memory_while_decoding_is_internal(tmp_path: Path) -> None:
    """A real MemoryError (the process's address space capped below what the decode needs)
    is our limit, not the image's: ``internal`` with the message, not ``too_many_pixels``."""
    done = subprocess.run(
        [sys.executable, "-c", _OUT_OF_MEMORY, str(tmp_path / "out")],
        check=False, capture_output=True, text=True, timeout=100, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    error_class, message = json.loads(done.stdout.strip().splitlines()[-1])
    assert error_class == "internal"
    assert message.startswith("MemoryError: ") and "out of memory" in message


def test_a_bug_outside_a_rows_guard_fails_its_rows_instead_of_losing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row the parent hands out must come back, or the run waits for it for ever. A bug
    in the row coroutine itself (outside its own try: injected here, as no input can reach
    one on purpose) fails the rows of that batch as `internal`, naming the error."""
    from pipeline.worker import protocol, rows

    async def broken_row(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the row loop")

    monkeypatch.setattr(rows, "_row", broken_row)
    batch = Shard(0, _rows(0, [str(tmp_path / f"{i}.jpg") for i in range(3)]))
    config = RunConfig(out=tmp_path / "out", procs=1, local_root=tmp_path)
    got = protocol.feed_rows(batch, config)
    deadline = 60
    while len(got.items) < 3 and deadline > 0:  # bounded: each call waits for an answer
        got.items.extend(protocol.collect_rows(max_wait_s=1).items)
        deadline -= 1
    assert sorted(item.row for item in got.items) == [0, 1, 2]
    assert {(item.status.value, item.error_class.value) for item in got.items} == {("failed", "internal")}
    assert all(item.error_message.startswith("RuntimeError: a bug in the row loop (") for item in got.items)
