"""One sample: a committed ok row's record, caption and image files, read back from the run's files."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.catalog_export import flatten
from pipeline.config import RunConfig
from pipeline.errors import StorageError

KEY_DIGITS = 9


def sample_key(row: int) -> str:
    """The sample's key: the manifest row, zero padded (sorts as the manifest; no dot)."""
    return f"{row:0{KEY_DIGITS}d}"


@dataclass(frozen=True, slots=True)
class Sample:
    key: str
    record: dict[str, Any]  # the catalog row, as `pipeline export` writes it
    # (field, bytes or the file holding them): ("jpg", …), ("128.jpg", …), ("original.png", Path)
    images: tuple[tuple[str, bytes | Path], ...]
    caption: str | None = None

    @property
    def size(self) -> int:
        return sum(len(data) if isinstance(data, bytes) else _size(data) for _, data in self.images)

    def image_bytes(self) -> list[tuple[str, bytes]]:
        return [(field, data if isinstance(data, bytes) else _read_file(data)) for field, data in self.images]


def read_sample(row: sqlite3.Row, columns: list[str], root: Path, caption_column: str | None) -> Sample:
    """The sample of one ok catalog row, its images read from the files under ``root``."""
    images: list[tuple[str, bytes]] = []
    thumbs = json.loads(row["thumbnails"]) if row["thumbnails"] else []
    for i, thumb in enumerate(thumbs):  # largest first (ProcessOptions.sizes)
        ext = PurePosixPath(thumb["path"]).suffix.lstrip(".")
        images.append((ext if i == 0 else f"{thumb['size']}.{ext}", _read(root, thumb["path"])))
    if row["original_path"]:
        # Left in its file: a tar takes it by an in-kernel copy (originals are the bulk).
        ext = PurePosixPath(row["original_path"]).suffix.lstrip(".") or "bin"
        images.append((ext if not thumbs else f"original.{ext}", root / row["original_path"]))
    record = flatten(row, columns)
    caption = None
    if caption_column is not None:
        extra = json.loads(row["extra"]) if row["extra"] else {}
        value = extra.get(caption_column)
        caption = None if value is None else str(value)
    return Sample(sample_key(row["row"]), record, tuple(images), caption)


def _read(root: Path, rel: str) -> bytes:
    return _read_file(root / rel)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise missing_file(path, exc) from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise missing_file(path, exc) from exc


def missing_file(path: Path, exc: OSError) -> StorageError:
    # The files are the run's own: one missing was removed by hand.
    return StorageError(
        f"cannot read {path} to pack it into a dataset shard: {exc.strerror or exc}; "
        "its row is in the catalog but its file is gone (rerun with --force to rebuild)"
    )


def image_fields(config: RunConfig) -> list[str]:
    """The image fields every sample of this run has (Parquet needs its columns up front);
    an original's extension varies, so its field is named ``original.*`` here."""
    p = config.process
    fields = (
        [p.thumb_ext if i == 0 else f"{size}.{p.thumb_ext}" for i, size in enumerate(p.sizes)]
        if p.thumbnails
        else []
    )
    if p.keep_originals:
        fields.append("original.*" if fields else "*")
    return fields
