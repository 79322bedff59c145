"""``dedup()``: exact groups, the candidate search, the checks and the groups, end to end."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.catalog import Catalog
from pipeline.config import CSV_NAME, JSON_NAME, DedupOptions
from pipeline.dedup.files import objects_named, run_files, thumbnail_root
from pipeline.dedup.groups import Grouper
from pipeline.dedup.items import load_items, load_verdicts, thumb_paths, unhashed_notice
from pipeline.dedup.members import members_of, save
from pipeline.dedup.outputs import write_outputs
from pipeline.dedup.pool import CheckPool, default_workers
from pipeline.dedup.search import search
from pipeline.dedup.thumbcheck import ThumbnailCheck
from pipeline.errors import UsageError


@dataclass(frozen=True, slots=True)
class DedupResult:
    images: int  # ok rows considered
    groups: int
    duplicates: int  # members that are not their group's representative
    exact: int  # of those, byte-identical to their representative
    candidates: int  # near candidate pairs from the index (not those found once their ends were one group)
    checked: int  # thumbnail checks run now
    cached: int  # thumbnail checks reused from an earlier dedup
    elapsed_s: float
    written: tuple[Path, Path] = (Path(CSV_NAME), Path(JSON_NAME))  # duplicates.csv, .json
    notice: str | None = None  # why some images were left out of the near search
    held: int = 0  # most candidate pairs held at once: bounded, never all pairs of a cluster


def dedup(
    out: str | Path,
    options: DedupOptions | None = None,
    *,
    catalog: str | Path | None = None,
    output: str | Path | None = None,
    workers: int | None = None,
) -> DedupResult:
    """Group the duplicates among the ok rows of the run in ``out``; write catalog + files.

    ``out`` is the run's OUT, a local folder or an fsspec URL (its thumbnails are read from
    there); ``catalog`` its ``--catalog`` if not OUT/catalog.sqlite (required for a URL);
    ``output`` the folder for duplicates.csv/.json (see ``run_files``). Thumbnail checks run
    on ``workers`` processes (default: every CPU this process may use), and so do the
    variant hashes of every thumbnail; the groups are the same for any number. Raises
    ``DedupError`` for a run without images or without the thumbnails to check,
    ``UsageError`` for ``workers`` < 1.
    """
    started = time.perf_counter()
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, not {workers}")
    options = options or DedupOptions()
    files = run_files(out, catalog, output)  # the argument is used up: the name is the open catalog's
    with Catalog(files.catalog) as catalog, contextlib.ExitStack() as scratch:  # noqa: PLR1704
        items, hashed = load_items(catalog)
        n = len(items.rows)
        # Exact: each SHA-256's earliest row is its content; the rest join it at distance 0.
        first_of: dict[str, int] = {}
        content = np.empty(n, np.int64)
        for idx, sha in enumerate(items.sha):
            content[idx] = first_of.setdefault(sha, idx)
        contents = np.fromiter(first_of.values(), np.int64, len(first_of))
        contents = contents[hashed[contents]]  # near search: only contents with perceptual hashes
        check = None
        if options.verify:
            # Every content's thumbnail: the candidates' variant hashes are made from them.
            paths = thumb_paths(catalog, items.rows[contents])
            root = scratch.enter_context(thumbnail_root(files, paths))
            check = ThumbnailCheck(root, paths, load_verdicts(catalog))
        thumbs_root = check.out if check is not None else Path(".")
        with (
            objects_named(files, thumbs_root),
            CheckPool(thumbs_root, check.thumbs if check else {}, workers=workers or default_workers()) as pool,
        ):
            # Variant hashes on every core: one thumbnail read per content (~4 ms each).
            variants = pool.variant_hashes(items.rows[contents].tolist()) if check is not None else None
            groups = Grouper(items, check, options, pool)
            search(items, contents, options, groups, variants)
        roots, joined, candidates, held = groups.root, groups.joined, groups.found, groups.peak_held
        group_of = roots[content]
        members = members_of(items, group_of, joined, content, options)
        save(catalog, members, check, options)
        write_outputs(catalog, files.csv, files.json)
    exact = sum(1 for m in members if m[3] == "exact" and m[0] != m[2])
    duplicates = sum(1 for m in members if m[0] != m[2])
    return DedupResult(
        images=n,
        groups=len({m[1] for m in members}),
        duplicates=duplicates,
        exact=exact,
        candidates=candidates,
        checked=len(check.new) if check else 0,
        cached=check.reused if check else 0,
        elapsed_s=time.perf_counter() - started,
        written=(files.csv, files.json),
        notice=unhashed_notice(int((~hashed).sum()), n),
        held=held,
    )
