"""Samples into numbered shards: one temp file open at a time, named and rolled over every ``per_shard`` samples."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.dataset.samples import Sample


class ShardFile(Protocol):
    samples: int

    def add(self, sample: Sample) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Part:
    part: int
    name: str
    rows: tuple[int, ...]
    bytes: int
    path: Path  # the finished file, at its temp name until committed


class Shards:
    """Samples into numbered shards of ``per_shard``: each one written to a temp file, then
    handed to ``commit`` whole. Knows nothing of the catalog (``pipeline export`` uses it too)."""

    def __init__(
        self,
        make: Callable[[Path], ShardFile],
        *,
        temp: Path,
        ext: str,
        per_shard: int,
        first: int = 0,
        prefix: str = "",
    ) -> None:
        self._make, self._temp, self._ext = make, temp, ext
        self.per_shard, self.next, self.prefix = per_shard, first, prefix
        self._open: ShardFile | None = None
        self._path: Path | None = None
        self._rows: list[int] = []

    def name(self, part: int) -> str:
        return f"{self.prefix}{part:05d}.{self._ext}"

    def add(self, row: int, sample: Sample) -> Part | None:
        """Append a sample; returns the shard it filled (closed, at its temp path), if any."""
        if self._open is None:
            self._temp.mkdir(parents=True, exist_ok=True)
            self._path = self._temp / f"dataset-{self.name(self.next)}.part"
            self._open = self._make(self._path)
        self._open.add(sample)
        self._rows.append(row)
        return self.close() if len(self._rows) >= self.per_shard else None

    def close(self) -> Part | None:
        """Close the open shard, if it holds a sample; its file stays at ``Part.path``."""
        if self._open is None:
            return None
        self._open.close()
        assert self._path is not None
        part = Part(self.next, self.name(self.next), tuple(self._rows), self._path.stat().st_size, self._path)
        self.next += 1
        self._open, self._rows = None, []
        return part

    def abandon(self) -> None:
        """Drop the open shard (a failed run: its rows are packed again at the next start)."""
        if self._open is not None:
            with contextlib.suppress(Exception):  # the error that stopped the run matters, not this
                self._open.close()
            assert self._path is not None
            self._path.unlink(missing_ok=True)
        self._open, self._rows = None, []
