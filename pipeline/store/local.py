"""Content-addressed files in a local OUT folder, written atomically; ``open_store`` picks a run's store.

Layout (names: ``base.py``)::

    OUT/originals/…, OUT/thumbs/…   the store's names (``base.ContentStore``)
    OUT/.tmp/                   in-flight writes; emptied by clear_temp() at run start/end
    OUT/.tmp/<i>-of-<n>/        the same for static partition i of n (partitions share OUT)

When OUT is an fsspec URL (s3://, gs://, memory://), ``open_store`` returns the
``FsspecStore`` of ``remote.py`` instead: same names, same interface (``ContentStore``).

Writes are atomic: bytes go to a uniquely named file in ``OUT/.tmp/`` (same filesystem as
the target, so ``os.replace`` is a rename) and are renamed into place only when complete.
A killed worker therefore leaves at worst a stray temp file, never a half-written image
under a valid name. Because a name is a content hash, an existing target already holds the
right bytes and is never rewritten; two workers racing on the same content both rename
identical bytes, which is harmless.

Durability: no fsync. The rename already protects against the failures we see (crash,
kill -9, OOM killer); only a kernel crash or power loss before writeback could leave an
empty file under a final name, and an fsync per thumbnail costs a journal flush each, at
thousands of files per second.

Errors: ``OSError`` meaning "OUT cannot be written" (disk full, quota, read-only,
permissions) becomes ``StorageError``, which is fatal for the run since every later item
would fail the same way. Other ``OSError`` propagate unchanged.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import is_url
from pipeline.errors import StorageError
from pipeline.store.base import TMP_DIR, ContentStore, store_parts

_PARTITION = re.compile(r"[0-9]+-of-[0-9]+")  # OUT/.tmp/<i>-of-<n>: a partition's temp folder

# errno values that mean "this folder cannot take our files", as opposed to a bug.
_STORAGE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
}
if hasattr(errno, "EDQUOT"):  # not defined on every platform
    _STORAGE_ERRNOS[errno.EDQUOT] = "disk quota exceeded"


# errno values of os.link meaning "no hard links here" (FAT, some network filesystems, a
# file at its link limit): the bytes are copied instead.
_NO_LINKS = frozenset(
    getattr(errno, name)
    for name in ("EPERM", "EXDEV", "EMLINK", "ENOTSUP", "EOPNOTSUPP", "ENOSYS")
    if hasattr(errno, name)
)


def open_store(out: Path | str, *, partition: str | None = None) -> ContentStore:
    """The store for OUT: local files, or (OUT an fsspec URL) objects written through fsspec.

    ``partition`` (``"3-of-8"``) gives a static partition its own temp folder, so partitions
    sharing OUT never clear each other's in-flight files.
    """
    if is_url(out):
        from pipeline.store.remote import FsspecStore  # fsspec is an extra: pipeline[s3]

        return FsspecStore(str(out))
    return Store(Path(out), temp=f"{TMP_DIR}/{partition}" if partition else TMP_DIR)


class Store(ContentStore):
    """Content-addressed files under ``root`` (the run's OUT folder).

    Thread-safe and cheap to construct; it holds no open files. Create one per process.
    """

    __slots__ = ("_made_dirs", "_tmp", "root")

    def __init__(self, root: Path, *, temp: str = TMP_DIR) -> None:
        self.root = Path(root)
        self._tmp = self.root / temp
        # Folders known to exist: saves a mkdir syscall per file. A set is safe to share
        # between threads here (worst case two threads both mkdir with exist_ok).
        self._made_dirs: set[Path] = set()

    # -- names ---------------------------------------------------------------------------

    def path(self, rel: str) -> Path:
        """Absolute path of a store-made relative path (refuses anything escaping OUT)."""
        return self.root.joinpath(*store_parts(rel))

    # -- reads ---------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    # -- writes --------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically; a no-op if ``rel`` already exists."""
        target = self.path(rel)
        if target.is_file():
            return
        with self._translate(target.parent):
            tmp = self._new_temp(target.suffix)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                self._commit(tmp, target)
            except BaseException:
                _unlink_quietly(tmp)
                raise

    @contextmanager
    def atomic_path(self, rel: str) -> Iterator[Path]:
        """Yield a temp path to write; on success it is renamed to ``rel``, else removed.

        The temp file already exists (empty) and has the target's suffix, so a writer
        that infers the format from the name still works; pass the format explicitly anyway.
        Callers skip the work when ``exists(rel)``; if the target appeared meanwhile, the
        rename replaces it with the same content.
        """
        target = self.path(rel)
        with self._translate(target.parent):
            tmp = self._new_temp(target.suffix)
            try:
                yield tmp
                self._commit(tmp, target)
            except BaseException:
                _unlink_quietly(tmp)
                raise

    @contextmanager
    def atomic_paths(self, rels: list[str]) -> Iterator[Path]:
        """``atomic_path`` for several names of the same bytes: one temp file to write, then
        in place under every one of ``rels``, each atomically (hard links of the temp file;
        a copy where the filesystem has no hard links). Existing files are replaced."""
        if len(rels) == 1:
            with self.atomic_path(rels[0]) as tmp:
                yield tmp
            return
        targets = [self.path(rel) for rel in rels]
        with self._translate(targets[0].parent):
            tmp = self._new_temp(targets[0].suffix)
            try:
                yield tmp
                for target in targets[1:]:
                    self._commit(self._link_temp(tmp), target)
                self._commit(tmp, targets[0])
            except BaseException:
                _unlink_quietly(tmp)
                raise

    def uploads(self) -> Future[None] | None:
        """Writes of this thread still on their way: None here, a local write is in place when
        it returns (an object store uploads in the background: ``FsspecStore.uploads``)."""
        return None

    def clear_temp(self) -> int:
        """Remove leftovers of interrupted writes; returns how many entries were removed.

        Only safe while no worker of this run writes here (run start and end; the run's lock
        keeps other runs of this OUT out). The temp folders of static partitions are theirs
        alone: a run of the whole OUT leaves them to their own partitions, which may be
        running beside it.
        """
        if not self._tmp.is_dir():
            return 0
        removed = 0
        with self._translate(self._tmp):
            for entry in self._tmp.iterdir():
                if self._tmp.name == TMP_DIR and _PARTITION.fullmatch(entry.name):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    _unlink_quietly(entry)
                removed += 1
        return removed

    # -- internals -----------------------------------------------------------------------

    def _new_temp(self, suffix: str) -> Path:
        self._ensure_dir(self._tmp)
        # pid + random token: unique across threads and worker processes sharing OUT.
        # os.open with 0o666 (not mkstemp's 0o600) so the final file gets the umask's
        # usual permissions and can be served by a web server running as another user.
        name = f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"
        tmp = self._tmp / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileNotFoundError:  # someone removed .tmp behind our cache's back
            self._made_dirs.discard(self._tmp)
            self._ensure_dir(self._tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        return tmp

    def _link_temp(self, tmp: Path) -> Path:
        """A second temp name of ``tmp``'s bytes: a hard link (measured here: 94 us against
        405 us for a copy of a 20 KB file, and no second copy on disk), else a copy."""
        twin = self._tmp / f"{os.getpid()}-{secrets.token_hex(8)}{tmp.suffix}"
        try:
            os.link(tmp, twin)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            shutil.copyfile(tmp, twin)
        return twin

    def _commit(self, tmp: Path, target: Path) -> None:
        self._ensure_dir(target.parent)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            if not tmp.exists():
                raise
            self._made_dirs.discard(target.parent)  # folder removed since we cached it
            self._ensure_dir(target.parent)
            os.replace(tmp, target)

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._made_dirs:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._made_dirs.add(folder)

    @contextmanager
    def _translate(self, folder: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            reason = _STORAGE_ERRNOS.get(exc.errno) if exc.errno is not None else None
            if reason is None:
                raise
            raise StorageError(f"cannot write to {folder}: {reason} ({exc.strerror or exc})") from exc


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        # The original error matters more than a failed cleanup; clear_temp() retries.
        pass
