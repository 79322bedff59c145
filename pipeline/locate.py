"""Where a run's catalog is: the one answer for run, status, export, dedup, the report and merge.

Every command names a run the same ways, and gets the same usage errors (exit 2) from here:

  OUT                   a local folder: its catalog is ``OUT/catalog.sqlite``
                        (``OUT/catalog-I-of-N.sqlite`` for a static partition of ``pipeline run``)
  OUT --catalog FILE    a local folder or an object-store URL (``s3://bucket/run1``), with the
                        catalog where the run's ``--catalog`` put it (always a local file)
  FILE                  the catalog file itself in place of OUT, for the commands that read only
                        the catalog (status, export); OUT is then the file's folder

An object-store OUT needs ``--catalog``; ``memory://`` is refused (private to each process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.catalog import CATALOG_NAME
from pipeline.config import is_url
from pipeline.errors import UsageError


@dataclass(frozen=True, slots=True)
class RunPlace:
    """A run's OUT (a local folder, or an object-store URL without a trailing /) and its catalog."""

    out: Path | str
    catalog: Path

    @property
    def remote(self) -> bool:
        return isinstance(self.out, str)


def catalog_path(
    out: Path | str, catalog: Path | str | None = None, *, partition: str | None = None, flag: str = ""
) -> Path:
    """Where the run of ``out`` keeps its catalog (it need not exist yet): ``catalog`` if
    given, else OUT's own, ``OUT/catalog-<partition>.sqlite`` for a static partition.

    ``flag`` names the option OUT came from in the errors (``"--out "`` for ``pipeline run``).
    """
    if str(out).startswith("memory://"):
        # fsspec's memory filesystem lives inside one process: worker processes would write
        # into their own memory and the files would vanish while the catalog lists them.
        raise UsageError(f"{flag}memory://… is private to each process; use a folder or s3://, gs://")
    if catalog is not None:
        return Path(catalog)
    if is_url(str(out)):
        raise UsageError(f"{flag}{out} is not a local folder: give --catalog PATH, the run's SQLite catalog")
    return Path(out) / (f"catalog-{partition}.sqlite" if partition is not None else CATALOG_NAME)


def find_run(out: Path | str, catalog: Path | str | None = None, *, needs_out: bool = False) -> RunPlace:
    """The run named by ``out`` (and ``catalog``, its ``--catalog``), whose catalog must exist.

    ``needs_out``: the command reads OUT's files too (dedup, the report), so a catalog file
    in place of OUT is refused: the catalog does not record where its run's files are.
    """
    where: Path | str = str(out).rstrip("/") if is_url(str(out)) else Path(out)
    if isinstance(where, Path) and where.is_file():
        if needs_out or catalog is not None:
            raise UsageError(
                f"{out} is a file: give the run's OUT (where its thumbnails are) and the catalog as --catalog {out}"
            )
        return RunPlace(where.parent, where)
    path = catalog_path(where, catalog)
    if isinstance(where, Path) and not where.is_dir():
        raise UsageError(f"no folder {out}: give the run's OUT")
    if not path.is_file():
        hint = "" if catalog is not None else " (a run with --catalog elsewhere: give the same --catalog)"
        raise UsageError(f"no catalog at {path}: is this a pipeline output folder?{hint}")
    return RunPlace(where, path)
