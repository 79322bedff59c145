"""Where finished shards go: renamed into a local folder, or uploaded whole to an fsspec URL."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pipeline.config import is_url
from pipeline.errors import StorageError


class Sink(Protocol):
    where: str

    def commit(self, tmp: Path, name: str) -> None: ...
    def write_bytes(self, data: bytes, name: str) -> None: ...
    def names(self) -> list[str]: ...
    def remove(self, name: str) -> None: ...


class LocalSink:
    """A local folder: a finished temp file is renamed into place (same filesystem)."""

    def __init__(self, folder: Path, temp: Path) -> None:
        self.folder, self.temp, self.where = folder, temp, str(folder)

    def commit(self, tmp: Path, name: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.replace(self.folder / name)
        except OSError as exc:
            raise StorageError(f"cannot write {self.folder / name}: {exc.strerror or exc}") from exc

    def write_bytes(self, data: bytes, name: str) -> None:
        tmp = self.temp / f"{name}.part"
        try:
            self.temp.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        except OSError as exc:
            raise StorageError(f"cannot write {tmp}: {exc.strerror or exc}") from exc
        self.commit(tmp, name)

    def names(self) -> list[str]:
        return [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


class ObjectSink:
    """An fsspec URL: a finished temp file is uploaded as one object, then removed."""

    def __init__(self, url: str) -> None:
        from pipeline.store.objects import ObjectFolder  # fsspec is an extra: pipeline[s3]

        self._folder = ObjectFolder(url)
        self.where = url

    def commit(self, tmp: Path, name: str) -> None:
        self._folder.put(tmp, name)
        tmp.unlink(missing_ok=True)

    def write_bytes(self, data: bytes, name: str) -> None:
        self._folder.put_bytes(data, name)

    def names(self) -> list[str]:
        return self._folder.names()

    def remove(self, name: str) -> None:
        self._folder.remove(name)


def open_sink(dest: Path | str, temp: Path) -> Sink:
    return ObjectSink(str(dest)) if is_url(dest) else LocalSink(Path(dest), temp)
