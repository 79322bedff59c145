"""What every store is: content names under OUT, checked, and the calls the image stage writes through.

Names derive from a SHA-256 hex digest and an int, never from a URL or from manifest text::

    originals/<sha[:2]>/<sha>.<ext>
    thumbs/<size>-<variant>/<sha[:2]>/<sha>.<ext>   size: 256 or WxH (512x384); variant:
                                                    [cover|pad-<colour>][-up]-q<quality>
    thumbs/<size>/<sha[:2]>/<sha>.png               PNG (lossless); older catalogs list
                                                    every thumbnail here (readers take
                                                    each row's path from the catalog)
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath

TMP_DIR = ".tmp"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"[a-z0-9]{1,8}")
_VARIANT = re.compile(r"[a-z0-9]{1,16}(-[a-z0-9]{1,16}){0,5}")  # e.g. q85, cover-up-q85, pad-ffffff
_BOX = re.compile(r"[1-9][0-9]{0,5}x[1-9][0-9]{0,5}")


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a lowercase SHA-256 hex digest: {sha256!r}")
    return sha256


def _check_ext(ext: str) -> str:
    if not isinstance(ext, str) or not _EXT.fullmatch(ext):
        raise ValueError(f"bad file extension: {ext!r}")
    return ext


def store_parts(rel: str) -> tuple[str, ...]:
    """The parts of a store-made relative path (refuses anything escaping OUT or in its temp folder)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or not pure.parts or ".." in pure.parts or pure.parts[0] == TMP_DIR:
        raise ValueError(f"not a store path: {rel!r}")
    return pure.parts


class ContentStore(ABC):
    """A store of the run's image files: local (``local.Store``) or on an object store
    (``remote.FsspecStore``). The names are shared; how a write becomes visible is each one's."""

    __slots__ = ()

    # -- names ---------------------------------------------------------------------------

    def thumb_relpath(self, sha256: str, size: int | str, ext: str, *, variant: str = "") -> str:
        """``thumbs/<size>[-<variant>]/<ab>/<sha>.<ext>``: the name carries every option that
        changes the bytes (``ProcessOptions.thumb_variant``, e.g. ``q85``), so two encodings
        of one image never share a name and an existing file is always the wanted one."""
        # An int (a longest side) or "WxH" (a box, ``boxes.parse_size``).
        if isinstance(size, bool) or not (
            (isinstance(size, int) and size >= 1) or (isinstance(size, str) and _BOX.fullmatch(size))
        ):
            raise ValueError(f"bad thumbnail size: {size!r}")
        if not isinstance(variant, str) or (variant and not _VARIANT.fullmatch(variant)):
            raise ValueError(f"bad thumbnail variant: {variant!r}")
        sha = _check_sha(sha256)
        folder = f"{size}-{variant}" if variant else str(size)
        return f"thumbs/{folder}/{sha[:2]}/{sha}.{_check_ext(ext)}"

    def original_relpath(self, sha256: str, ext: str) -> str:
        sha = _check_sha(sha256)
        return f"originals/{sha[:2]}/{sha}.{_check_ext(ext)}"

    # -- what the image stage calls ------------------------------------------------------

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None: ...

    @abstractmethod
    def atomic_path(self, rel: str) -> AbstractContextManager[Path]: ...

    @abstractmethod
    def atomic_paths(self, rels: list[str]) -> AbstractContextManager[Path]: ...

    @abstractmethod
    def uploads(self) -> Future[None] | None: ...

    @abstractmethod
    def clear_temp(self) -> int: ...
