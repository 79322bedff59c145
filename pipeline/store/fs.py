"""An fsspec URL's filesystem: the only fsspec importer, and only when OUT is a URL (``pipeline[s3]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.errors import UsageError

# Threads for filesystems without an event loop of their own (memory://, local paths).
SYNC_THREADS = 8


def filesystem(url: str):  # type: ignore[no-untyped-def]
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"--out {url} needs fsspec: pip install 'pipeline[s3]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # e.g. s3fs or gcsfs missing for that protocol
        raise UsageError(f"--out {url}: {exc}") from None
    except ValueError as exc:  # unknown protocol
        raise UsageError(f"--out {url}: {exc}") from None


def run_on_loop(fs: Any, coroutine: Callable[..., Any], *args: Any) -> Any:
    """Run ``coroutine(*args)`` on the event loop of an asynchronous filesystem (s3fs, gcsfs)."""
    from fsspec.asyn import sync

    return sync(fs.loop, coroutine, *args)
