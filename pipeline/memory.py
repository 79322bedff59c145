"""Keep a worker's resident memory near what it holds, not what it once held (glibc only).

A worker's heap churns through bodies of a few hundred KB to a few MB and decoded pictures
of several MB, from three threads (the caller, the event loop, the Pillow thread). glibc
gives each thread an arena of its own and returns freed memory to the system only from the
top of the main heap, so on a web-like crawl each worker sat at ~280 MB although what it
held at any moment was a fraction of that (issue 10: 513-639 MB for the tree at --procs 2).
Two arenas, and a ``malloc_trim`` at most every ``TRIM_EVERY_S`` from the Pillow thread,
give the freed pages back. Elsewhere (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

M_ARENA_MAX = -8  # mallopt parameter numbers from glibc's malloc.h
ARENAS = 2
TRIM_EVERY_S = 0.5


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - present in glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
_lock = threading.Lock()
_last_trim = 0.0


def limit_arenas() -> None:
    """Call once at process start, before threads allocate."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def trim_now_and_then() -> None:
    """Give freed heap pages back to the system, at most every ``TRIM_EVERY_S`` (a trim walks
    the free lists: ~1 ms here, so twice a second costs ~0.2% of a core)."""
    global _last_trim
    if _LIBC is None:
        return
    now = time.monotonic()
    if now - _last_trim < TRIM_EVERY_S or not _lock.acquire(blocking=False):
        return
    try:
        _last_trim = now
        _LIBC.malloc_trim(0)
    finally:
        _lock.release()
