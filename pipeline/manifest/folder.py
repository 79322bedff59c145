"""A folder as a manifest: every image file under it, in a stable order, named by its relative path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.manifest.rows import make_row
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)


def walk_images(top: Path) -> Iterator[tuple[str, Path]]:
    """Image files under ``top`` in a stable order (sorted at every level)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                full = Path(dirpath, name)
                yield full.relative_to(top).as_posix(), full


def read_dir(spec: ManifestSpec) -> Iterator[ManifestRow]:
    for row, (rel, _full) in enumerate(walk_images(spec.path)):
        yield make_row(spec, row, row + 1, rel, rel, {})
