"""Scratch files to encode into before an upload: anonymous memory files, else OS temp files removed after reading."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_file(suffix: str) -> Iterator[tuple[Path, Callable[[], bytes]]]:
    """A local file to encode into and a function that reads it back; gone afterwards.

    An anonymous memory file where the OS has one: nothing is left on disk by a killed
    process. Pillow opens the yielded path itself (``/proc/self/fd/N``, the same file).
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("pipeline-thumb", os.MFD_CLOEXEC)
        try:
            yield Path(f"/proc/self/fd/{fd}"), lambda: _read_all(fd)
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(prefix="pipeline-", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp, tmp.read_bytes
    finally:
        tmp.unlink(missing_ok=True)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
