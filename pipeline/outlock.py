"""One writer per OUT: an exclusive ``flock`` held for as long as a command writes there.

A second ``pipeline run`` on the same OUT used to delete the first one's temp files at
start-up (their renames then failed as ``internal`` rows), and with ``--force`` wiped the
catalog under it. Now the run holds a lock file and a second one stops at once with
``Error: OUT is in use by pid N`` (exit 2).

``flock`` is released by the kernel when its holder dies, however it dies (``kill -9``, OOM,
power loss), so a killed run never leaves a stale lock: nothing to clean up by hand. The
file stays (removing it would race with a run taking it) and holds the last holder's pid.

What is locked, so that runs that share nothing never wait for each other:

    OUT/.lock             the run of OUT (OUT/catalog.sqlite, OUT/.tmp); merge and dedup too
    OUT/.lock-<i>-of-<n>  static partition i of n (its own catalog and .tmp/<i>-of-<n>)
    <catalog>.lock        a --catalog elsewhere (e.g. beside an object-store OUT)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import StorageError, UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def out_lock_path(out: Path, partition: str | None = None) -> Path:
    """The lock of a local OUT, or of one static partition of it."""
    return out / (f"{LOCK_NAME}-{partition}" if partition else LOCK_NAME)


def catalog_lock_path(catalog: Path) -> Path:
    return catalog.with_name(catalog.name + ".lock")


@contextlib.contextmanager
def locked(path: Path, what: Path | str, *, instead: str = "--out") -> Iterator[None]:
    """Hold the exclusive lock ``path`` or raise ``UsageError`` naming the holder of ``what``
    (and the option that would point this command elsewhere)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by spawned workers
    except OSError as exc:
        raise StorageError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            by = f"pid {holder}" if holder.isdigit() else "another process"
            raise UsageError(
                f"{what} is in use by {by} (another pipeline run); wait for it to end, or use another {instead}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
