"""Where a run's pieces are for dedup: its catalog, its thumbnails (local or downloaded), its outputs."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.catalog import Catalog
from pipeline.config import CSV_NAME, JSON_NAME
from pipeline.dedup.items import smallest_thumbnail
from pipeline.dedup.outputs import iter_grouped
from pipeline.dedup.thumbcheck import _NO_THUMBS as NO_THUMBS
from pipeline.errors import DedupError, StorageError
from pipeline.locate import find_run


@dataclass(frozen=True, slots=True)
class RunFiles:
    """Where a run's pieces are: ``out`` (a local folder or an fsspec URL: the thumbnails'
    root), its catalog, and where duplicates.csv/.json go."""

    out: Path | str
    catalog: Path
    csv: Path
    json: Path

    @property
    def remote(self) -> bool:
        return isinstance(self.out, str)


def run_files(
    out: str | Path, catalog: str | Path | None = None, output: str | Path | None = None
) -> RunFiles:
    """Find the run: OUT/catalog.sqlite, or ``catalog`` (a run's ``--catalog``). Outputs go to
    ``output``, else OUT, else (OUT is a URL) beside the catalog as ``<catalog stem>.duplicates.*``.

    Raises ``UsageError`` for what cannot be a run, saying what to give instead.
    """
    place = find_run(out, catalog, needs_out=True)  # locate.py: the usage errors of every command
    where, path = place.out, place.catalog
    if output is not None:
        folder, prefix = Path(output), ""
    elif isinstance(where, Path):
        folder, prefix = where, ""
    else:
        folder, prefix = path.parent, f"{path.stem}."
    return RunFiles(
        out=where, catalog=path, csv=folder / f"{prefix}{CSV_NAME}", json=folder / f"{prefix}{JSON_NAME}"
    )


@contextlib.contextmanager
def thumbnail_root(files: RunFiles, paths: dict[int, str | None]) -> Iterator[Path]:
    """A local folder under which the thumbnails ``paths`` are: OUT itself, or for an object
    store a temp folder beside the catalog into which each is downloaded once (concurrently),
    removed afterwards. ``DedupError`` naming the object if one is not in the store."""
    if not files.remote:
        yield Path(files.out)
        return
    from pipeline.store.objects import copy_objects

    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{files.catalog.name}.thumbs-", dir=files.catalog.parent))
    except OSError as exc:
        raise StorageError(f"cannot make a folder for the thumbnails beside {files.catalog}: {exc}") from exc
    try:
        missing = copy_objects(str(files.out), [p for p in paths.values() if p], folder)
        if missing:  # named here, as the object it is: the check would only see a local path
            row = next(r for r, p in paths.items() if p == missing[0])
            raise DedupError(
                f"thumbnail {files.out}/{missing[0]} of row {row} is missing from the store "
                f"({len(missing):,} missing); {NO_THUMBS}"
            )
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def objects_named(files: RunFiles, local: Path) -> Iterator[None]:
    """For an object-store OUT, a thumbnail's error names the object (``s3://…/thumbs/…``),
    not the temp copy the check read, which is gone when the error is shown."""
    try:
        yield
    except DedupError as exc:
        if not files.remote:
            raise
        text = str(exc).replace(f"{local}/", f"{files.out}/")
        raise DedupError(re.sub(r"^thumbnail (\S+) of row", rf"thumbnail {files.out}/\1 of row", text)) from exc


def report_thumbnails(files: RunFiles, dest: Path) -> Path:
    """The local folder the report's thumbnails are under: OUT, or for an object store
    ``dest``, into which the grouped rows' thumbnails are downloaded (once, concurrently)."""
    if not files.remote:
        return Path(files.out)
    from pipeline.store.objects import copy_objects

    with Catalog(files.catalog, readonly=True) as catalog:
        rels = [smallest_thumbnail(r["thumbnails"]) for r in iter_grouped(catalog)]
    copy_objects(str(files.out), [r for r in rels if r], dest)
    return dest
