"""Whole objects under an fsspec URL: thumbnails read back for ``pipeline dedup``, dataset shards written by the parent."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from pipeline.errors import StorageError
from pipeline.store.fs import SYNC_THREADS, filesystem, run_on_loop

# -- reading back (``pipeline dedup`` of a run whose OUT is a URL) -----------------------------

READS_AT_ONCE = 64  # objects asked for together; their bytes are held until written locally


def copy_objects(url: str, rels: list[str], dest: Path) -> list[str]:
    """Download the objects ``rels`` (paths relative to the store ``url``, as the catalog lists
    them) to the same relative paths under the local folder ``dest``; return those missing.

    One GET per object, ``READS_AT_ONCE`` at a time: on the filesystem's own event loop for
    s3fs/gcsfs, on a few threads otherwise. A missing object is skipped (its reader says
    which); any other failure (no bucket, wrong keys, access denied) is ``StorageError``.
    """
    fs, base = filesystem(url.rstrip("/"))
    base = base.rstrip("/")
    safe = sorted({r for r in rels if _is_relative(r)})
    missing = [r for r in rels if not _is_relative(r)]
    for start in range(0, len(safe), READS_AT_ONCE):
        chunk = safe[start : start + READS_AT_ONCE]
        keys = [f"{base}/{rel}" for rel in chunk]
        if getattr(fs, "async_impl", False):
            got = run_on_loop(fs, _cat_all, fs, keys)
        else:
            with ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="pipeline-read") as pool:
                got = list(pool.map(lambda key: _cat_or_error(fs, key), keys))
        for rel, data in zip(chunk, got):
            if isinstance(data, FileNotFoundError):
                missing.append(rel)
            elif isinstance(data, BaseException):
                raise StorageError(f"cannot read from {url}: {type(data).__name__}: {data}") from data
            else:
                path = dest / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return missing


async def _cat_all(fs, keys: list[str]) -> list[bytes | BaseException]:  # type: ignore[no-untyped-def]
    # s3fs asks for an object's size (a HEAD) before each whole read, to split large ones into
    # ranges; thumbnails are small: one GET each.
    whole = {"max_concurrency": 1} if "max_concurrency" in inspect.signature(fs._cat_file).parameters else {}
    return await asyncio.gather(*(fs._cat_file(key, **whole) for key in keys), return_exceptions=True)


def _cat_or_error(fs, key: str) -> bytes | BaseException:  # type: ignore[no-untyped-def]
    try:
        return fs.cat_file(key)
    except Exception as exc:  # noqa: BLE001  (reported per object by the caller, as gather does)
        return exc


def _is_relative(rel: str) -> bool:
    pure = PurePosixPath(rel)
    return bool(pure.parts) and not pure.is_absolute() and ".." not in pure.parts


# -- whole objects (dataset shards, pipeline/dataset/) ----------------------------------------


class ObjectFolder:
    """A folder of whole objects under ``url``, written by the parent: dataset shards and their
    ``_stats.json``. ``put`` uploads a finished local file as one object (one PUT; above s3fs's
    part size a multipart upload, which appears only at its completion), so a reader never
    sees part of a shard."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._fs, base = filesystem(self.url)
        self._base = base.rstrip("/")

    def put(self, local: Path, name: str) -> None:
        self._call("write", self._fs.put_file, str(local), f"{self._base}/{name}")

    def put_bytes(self, data: bytes, name: str) -> None:
        self._call("write", self._fs.pipe_file, f"{self._base}/{name}", data)

    def names(self) -> list[str]:
        """Names directly under the folder (none if it does not exist yet)."""
        try:
            self._fs.invalidate_cache(self._base)
            listed = self._fs.ls(self._base, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # botocore's errors are not all OSError
            raise StorageError(f"cannot list {self.url}: {type(exc).__name__}: {exc}") from exc
        return [PurePosixPath(p).name for p in listed]

    def remove(self, name: str) -> None:
        try:
            self._fs.rm_file(f"{self._base}/{name}")
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(f"cannot remove {self.url}/{name}: {type(exc).__name__}: {exc}") from exc

    def _call(self, what: str, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception as exc:
            raise StorageError(f"cannot {what} to {self.url}: {type(exc).__name__}: {exc}") from exc
