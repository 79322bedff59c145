"""Wires the stages: manifest → shards → batches → executor (fetch + process + store) → catalog.

The runner lives in the parent process. It checks the run's fingerprint against the
catalog (resume or refuse), streams the rows that still need work to the executor in
batches (schedule/batches.py), commits finished rows every half second with the done marks of the
shards they complete, and reports progress through a callback, so that the CLI, a notebook
or a script can show it however they like.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.catalog import CATALOG_NAME, Catalog
from pipeline.config import FetchOptions, ProcessOptions, RunConfig, is_url
from pipeline.dataset.paths import files_root
from pipeline.dataset.writer import DatasetWriter, check_caption
from pipeline.errors import ManifestTruncated, PipelineError, ResumeRefused, StorageError, UsageError
from pipeline.layout import default_layout, name_rows
from pipeline.limits import fit_open_files
from pipeline.manifest.read import count_rows, extra_columns, identity, read_rows
from pipeline.manifest.spec import ManifestSpec, default_out, open_manifest
from pipeline.models import ItemResult, ManifestRow, Shard, ShardDone, Status
from pipeline.outlock import catalog_lock_path, locked, out_lock_path
from pipeline.schedule.batches import batch_size, batches
from pipeline.schedule.executors import LocalExecutor, RowExecutor
from pipeline.schedule.shards import iter_shards, keep_rows
from pipeline.schedule.tracker import ShardTracker
from pipeline.store.local import open_store
from pipeline.worker.items import invalid_item


@dataclass(slots=True)
class Progress:
    """Counts for this invocation, updated after every commit (every ~0.5 s)."""

    rows: int = 0
    rows_before: int = 0  # committed by earlier runs of the same manifest
    rows_total: int | None = None  # estimated in the background, for a progress bar
    by_status: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    shards_done: int = 0
    shards_skipped: int = 0  # already done by an earlier, interrupted run
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def ok(self) -> int:
        return self.by_status[Status.OK.value]

    @property
    def failed(self) -> int:
        return self.rows - self.ok

    @property
    def fraction(self) -> float | None:
        """Share of the manifest in the catalog, once the total is known."""
        if not self.rows_total:
            return None
        return min(1.0, (self.rows_before + self.rows) / self.rows_total)

    def rate(self) -> float:
        """Rows per second over this invocation."""
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RunSummary:
    out: Path | str
    catalog: Path
    rows: int  # rows in the catalog (this run and earlier ones)
    by_status: dict[str, int]
    by_error: dict[str, int]
    shards_done: int
    shards_total: int | None
    this_run: Progress
    failure_rate: float

    @property
    def complete(self) -> bool:
        return self.shards_total is not None and self.shards_done >= self.shards_total


ProgressCallback = Callable[[Progress], None]


def run(
    manifest: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    on_progress: ProgressCallback | None = None,
    executor: RowExecutor | None = None,
    **options: Any,
) -> RunSummary:
    """Run a manifest into ``out`` and return the summary; the Python twin of ``pipeline run``.

    ``options`` are ``RunConfig``, ``FetchOptions`` or ``ProcessOptions`` fields, e.g.
    ``run("urls.csv", procs=2, sizes=(256, 1024), per_host=4)``. Works in Jupyter too: the
    workers are spawned, and the parent uses no event loop of its own.
    """
    spec = open_manifest(
        manifest,
        url_column=options.get("url_column", "url"),
        key_column=options.get("key_column", "key"),
        local_root=options.get("local_root"),
    )
    config = build_config(os.fspath(out) if out is not None else default_out(spec), **options)
    return run_config(spec, config, on_progress=on_progress, executor=executor)


def build_config(out: Path | str, **options: Any) -> RunConfig:
    """Sort flat keyword options into RunConfig / FetchOptions / ProcessOptions."""
    groups: dict[type, dict[str, Any]] = {RunConfig: {}, FetchOptions: {}, ProcessOptions: {}}
    for name, value in options.items():
        for cls, bucket in groups.items():
            if name in cls.__dataclass_fields__ and name not in ("fetch", "process", "out"):
                bucket[name] = value
                break
        else:
            raise UsageError(f"unknown option: {name}")
    return RunConfig(
        out=out,
        fetch=FetchOptions(**groups[FetchOptions]),
        process=ProcessOptions(**groups[ProcessOptions]),
        **groups[RunConfig],
    )


def run_config(
    spec: ManifestSpec,
    config: RunConfig,
    *,
    on_progress: ProgressCallback | None = None,
    executor: RowExecutor | None = None,
) -> RunSummary:
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned worker importing an unguarded main module that calls run(): stop before
        # it touches OUT; the parent sees its worker die at start-up and says what to do.
        raise UsageError("pipeline.run() called while a worker process starts: see the parent's error")
    if config.local_root is None and spec.local_root is not None:
        config = replace(config, local_root=spec.local_root)
    config = fit_open_files(config)
    catalog_file = catalog_path(config)
    if isinstance(config.out, Path):
        _make_out(config.out)
    _make_out(catalog_file.parent)
    with _lock(config, catalog_file):
        return _run_locked(spec, config, catalog_file, on_progress, executor)


def _lock(config: RunConfig, catalog_file: Path) -> contextlib.ExitStack:
    """Hold OUT (or this partition of it) and the catalog for the run: a second run on them
    stops at once instead of deleting this one's temp files or resetting its catalog."""
    stack = contextlib.ExitStack()
    try:
        if isinstance(config.out, Path):
            stack.enter_context(locked(out_lock_path(config.out, config.partition), config.out))
            if catalog_file.parent == config.out:
                return stack  # OUT/catalog*.sqlite: covered by the lock of OUT
        stack.enter_context(locked(catalog_lock_path(catalog_file), catalog_file, instead="--catalog"))
    except BaseException:
        stack.close()
        raise
    return stack


def _run_locked(
    spec: ManifestSpec,
    config: RunConfig,
    catalog_file: Path,
    on_progress: ProgressCallback | None,
    executor: RowExecutor | None,
) -> RunSummary:
    # A dataset on an object store: workers write files locally, the parent packs them.
    files = files_root(config, catalog_file)
    store = open_store(files, partition=config.partition)
    store.clear_temp()  # leftovers of a killed run: never visible as finished files
    progress = Progress()
    with Catalog(catalog_file) as catalog:
        config = _settle_layout(config, spec, catalog)
        check_caption(config, extra_columns(spec))  # before the fingerprint records it
        _check_fingerprint(catalog, spec, config)
        whole = _WholeManifest(spec, config.out, catalog)
        if config.force and whole.differs(catalog):  # same head and tail, other middle
            catalog.reset()
            _check_fingerprint(catalog, spec, config)
            whole.resuming = False
        progress.rows_before = catalog.summary().rows
        if config.partition is None:
            _estimate_total_in_background(spec, progress)
        else:  # a partition runs ~1/N of the rows: no exact total to show
            catalog.set_meta("partition", {"num_workers": config.num_workers, "worker_index": config.worker_index})
        extras = extra_columns(spec)
        dataset = None
        if config.output_format != "files":
            if extras and catalog.get_meta("extra_columns") is None:
                catalog.set_meta("extra_columns", list(extras))  # the dataset's columns, before any row
            dataset = DatasetWriter(catalog, config, Path(files))
        tracker = ShardTracker(config.shard_size)
        commits = _Commits(catalog, tracker, extras, progress, on_progress, dataset)
        cut = _Cut()
        work = _batches(_todo(catalog, spec, config, progress, whole, cut), tracker, commits, config.procs, cut)
        executor = executor or LocalExecutor(config.procs)
        finished = executor.run(work, config if files == config.out else replace(config, out=files))
        try:
            for batch in finished:
                whole.check(catalog)  # before the rows: a changed manifest's rows stay out
                commits.add(batch.items, batch.worker_pid)
                commits.flush(due_only=True)
            commits.flush()
            if dataset is not None:
                dataset.finish()
        except ResumeRefused:
            if dataset is not None:
                dataset.abandon()
            raise  # the manifest changed under the run: its rows are not this run's
        except BaseException:
            # Rows that finished are worth keeping whatever stops the run (Ctrl-C, a full
            # disk for the files): the rerun will not fetch them again.
            commits.flush_quietly()
            if dataset is not None:
                dataset.abandon()  # the open shard's rows are packed again at the next start
            raise
        finally:
            # Stop the workers *before* clearing their temp files: a Ctrl-C that lands here
            # (not inside the executor) would otherwise leave them writing until collected.
            if hasattr(finished, "close"):
                finished.close()
            store.clear_temp()
        if cut.error is not None:
            raise cut.error  # the rows before the cut are committed; the rerun resumes after them
        return _summary(catalog, config, progress)


def catalog_path(config: RunConfig) -> Path:
    """Where the driver keeps the catalog: always a local file, never on an object store.

    ``--catalog`` if given; else beside OUT: ``OUT/catalog.sqlite``, or
    ``OUT/catalog-<i>-of-<n>.sqlite`` for a static partition (``pipeline merge`` combines them).
    """
    if str(config.out).startswith("memory://"):
        # fsspec's memory filesystem lives inside one process: worker processes would write
        # into their own memory and the files would vanish while the catalog lists them.
        raise UsageError("--out memory://… is private to each process; use a folder or s3://, gs://")
    if config.catalog is not None:
        return config.catalog
    if is_url(config.out):
        raise UsageError(f"--out {config.out} is not a local folder: give --catalog PATH for the SQLite catalog")
    assert isinstance(config.out, Path)
    if config.partition is not None:
        return config.out / f"catalog-{config.partition}.sqlite"
    return config.out / CATALOG_NAME


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc


def _estimate_total_in_background(spec: ManifestSpec, progress: Progress) -> None:
    """Count the manifest's rows on a thread: a bar is nice, but never worth a wait."""

    def count() -> None:
        try:
            progress.rows_total = count_rows(spec)
        except (OSError, PipelineError, EOFError, ValueError):
            pass  # the bar stays without a total; the run itself reports real problems

    threading.Thread(target=count, name="pipeline-count-rows", daemon=True).start()


# Not compared: a manifest moved or renamed with the same content is the same run (its
# size and hashes still have to agree). Catalogs before this held it in the fingerprint.
_ADVISORY = frozenset({"path"})


def _fingerprint(spec: ManifestSpec, config: RunConfig) -> dict[str, Any]:
    manifest = {k: v for k, v in identity(spec).items() if k not in _ADVISORY}
    return {"manifest": manifest, "options": config.fingerprint_options()}


def _settle_layout(config: RunConfig, spec: ManifestSpec, catalog: Catalog) -> RunConfig:
    """The layout given, else the default for this kind of manifest; but a catalog begun
    before layouts existed (no layout in its fingerprint) resumes content-addressed, as it
    started, rather than being refused for a default it never had."""
    if config.layout is not None:
        return config
    stored = catalog.get_meta("fingerprint")
    if stored is not None and "layout" not in stored.get("options", {}) and not config.force:
        return replace(config, layout="content")
    return replace(config, layout=default_layout(spec.kind))


def _check_fingerprint(catalog: Catalog, spec: ManifestSpec, config: RunConfig) -> None:
    """Resume only the same manifest with the same result-changing options."""
    wanted = _fingerprint(spec, config)
    stored = catalog.get_meta("fingerprint")
    if stored is not None:
        differences = tuple(
            f"{part}.{name}"
            for part in ("manifest", "options")
            for name in sorted(set(stored.get(part, {})) | set(wanted[part]))
            if not (part == "manifest" and name in _ADVISORY)
            and stored.get(part, {}).get(name) != wanted[part].get(name)
        )
        if not differences:
            catalog.set_meta("manifest_path", str(spec.path))  # where it was last read: advisory
            return
        if not config.force:
            raise ResumeRefused(
                f"{config.out} holds a run of another manifest or with other options; "
                "use another --out, or --force to discard its catalog and start over",
                differences,
            )
        catalog.reset()
    catalog.set_meta("fingerprint", wanted)
    catalog.set_meta("manifest_path", str(spec.path))


class _WholeManifest:
    """The SHA-256 of every byte of the manifest file, read on a thread beside the run.

    The fingerprint hashes only the size and the first and last MiB (cheap, checked before
    anything runs), so a same-length edit in the middle of a bigger manifest resumed into a
    mix of two manifests. The whole hash is stored with the run's first read (as soon as it
    is ready) and compared on every later one before any of its rows is committed, and at
    the latest before the run records its shard total (what marks it complete). A mismatch
    stops the run (``ResumeRefused``, exit 2). Reading the file once more beside the row
    stream keeps ``manifest.py`` as it is.
    """

    META = "manifest_sha256"

    def __init__(self, spec: ManifestSpec, out: Path | str, catalog: Catalog) -> None:
        self.spec, self.out = spec, out
        self.checked = spec.kind == "dir"  # a folder's identity already lists every file
        self.resuming = catalog.get_meta(self.META) is not None  # then nothing commits unchecked
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._hash, name="pipeline-hash-manifest", daemon=True)
        if not self.checked:
            self._thread.start()

    def _hash(self) -> None:
        digest = hashlib.sha256()
        try:
            with self.spec.path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            return  # the row stream reports an unreadable manifest itself
        self._digest = digest.hexdigest()

    def differs(self, catalog: Catalog) -> bool:
        """Whether the catalog holds another manifest's hash (waits for this one)."""
        if self._thread.ident is not None:
            self._thread.join()
        stored = catalog.get_meta(self.META)
        return None not in (stored, self._digest) and stored != self._digest

    def check(self, catalog: Catalog, *, wait: bool = False) -> None:
        """Compare with (or store) the hash of the run's first read: on a resume before
        anything is committed, else once the hash is ready (or ``wait``)."""
        if self.checked or (self._thread.is_alive() and not (wait or self.resuming)):
            return
        self.checked = True
        if self.differs(catalog):
            raise ResumeRefused(
                f"{self.spec.path} changed since the run in {self.out} started: same size and same "
                "first and last MiB, but other bytes in between, so its rows would mix two manifests; "
                "nothing more was recorded. Use another --out, or --force to discard the catalog and start over"
            )
        if self._digest is not None and catalog.get_meta(self.META) is None:
            catalog.set_meta(self.META, self._digest)


@dataclass(slots=True)
class _Cut:
    """Where the manifest stopped being readable, if it did (a truncated .gz). The rows read
    before the cut still run and are committed; then the run raises this error. The shard
    the cut falls in gets no done mark (its rows after the cut were never seen)."""

    error: ManifestTruncated | None = None


def _until_cut(rows: Iterable[ManifestRow], cut: _Cut) -> Iterator[ManifestRow]:
    try:
        yield from rows
    except ManifestTruncated as exc:
        cut.error = exc


def _todo(
    catalog: Catalog, spec: ManifestSpec, config: RunConfig, progress: Progress, whole: _WholeManifest, cut: _Cut
) -> Iterator[Shard]:
    """The shards this invocation must run, streamed; records the total once it is known."""
    done = catalog.done_shards()
    started = catalog.started_shards()  # killed mid-shard: run only the rows not committed
    failed = catalog.shards_with_failures() if config.retry_failed else set()
    total = mine = 0
    # Names are chosen over every row in manifest order (also those of done shards and of
    # other partitions), so a rerun gives each row the name it had (layout.py).
    rows = name_rows(read_rows(spec), config.layout or "content", root=str(spec.root), base=str(spec.base))
    for shard in iter_shards(_until_cut(rows, cut), config.shard_size):
        total += 1
        # Static partitioning: the same deterministic ids on every machine, so each takes
        # its residue class and none overlaps (every partition still reads the manifest).
        if shard.shard_id % config.num_workers != config.worker_index:
            continue
        mine += 1
        if shard.shard_id in started:
            committed = catalog.committed_rows(shard.shard_id)
            yield Shard(shard.shard_id, tuple(r for r in shard.rows if r.row not in committed))
        elif shard.shard_id not in done:
            yield shard
        elif shard.shard_id in failed:
            retry = keep_rows(shard, catalog.failed_rows(shard.shard_id))
            if retry is not None:
                yield retry
        else:
            progress.shards_skipped += 1
    whole.check(catalog, wait=True)  # the shard count marks the run complete: not on a changed manifest
    if cut.error is not None:
        return  # a manifest cut short has no known total: the run is not complete
    catalog.set_meta("total_shards", mine)
    if config.partition is not None:
        catalog.set_meta("manifest_shards", total)  # what the merged catalog will expect


# Finished rows are committed at least this often, and at once when this many are waiting:
# a kill loses at most the rows finished in the last half second (plus those in flight).
COMMIT_EVERY_S = 0.5
COMMIT_ROWS = 2000


def _batches(
    shards: Iterator[Shard], tracker: ShardTracker, commits: _Commits, procs: int, cut: _Cut
) -> Iterator[Shard]:
    """The shards to run, as the batches workers receive; invalid rows are recorded here,
    in the parent (there is nothing to fetch)."""
    for shard in shards:
        # The stream is pulled one shard at a time, so a cut already seen means this is the
        # last shard, the one the cut fell in: its rows run, but it is never marked done.
        whole = cut.error is None
        if not shard.rows:  # a resumed shard with every row committed but no done mark
            if whole:
                commits.add_done(ShardDone(shard.shard_id))
            continue
        if whole:
            tracker.expect(shard)
        commits.add([invalid_item(r) for r in shard.rows if r.invalid is not None])
        valid = [r for r in shard.rows if r.invalid is None]
        yield from batches(valid, shard.shard_id, batch_size(len(valid), procs))


class _Commits:
    """Finished rows on their way to the catalog: one transaction every ``COMMIT_EVERY_S``,
    holding the done marks of the shards it completes; progress is counted per commit."""

    def __init__(
        self,
        catalog: Catalog,
        tracker: ShardTracker,
        extras: tuple[str, ...],
        progress: Progress,
        on_progress: ProgressCallback | None,
        dataset: DatasetWriter | None = None,
    ) -> None:
        self.catalog, self.tracker, self.extras = catalog, tracker, extras
        self.progress, self.on_progress, self.dataset = progress, on_progress, dataset
        self._rows: list[tuple[int, ItemResult]] = []
        self._done: list[ShardDone] = []
        self._last = time.monotonic()

    def add(self, items: list[ItemResult], worker_pid: int | None = None) -> None:
        self._rows.extend((self.tracker.shard_of(item), item) for item in items)
        self._done.extend(self.tracker.finish(items, worker_pid))

    def add_done(self, shard: ShardDone) -> None:
        self._done.append(shard)

    def flush(self, *, due_only: bool = False) -> None:
        now = time.monotonic()
        if due_only and len(self._rows) < COMMIT_ROWS and now - self._last < COMMIT_EVERY_S:
            return
        self._last = now
        if not self._rows and not self._done:
            return
        rows, done = self._rows, self._done
        items = [item for _, item in rows]
        self.catalog.write_rows(rows, done, extra_columns=self.extras + _jsonl_extras(items, self.extras))
        self._rows, self._done = [], []
        if self.dataset is not None:  # after the commit: a sample is always a catalog row
            self.dataset.add(item.row for item in items if item.status is Status.OK)
        _count(self.progress, items, len(done))
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except (PipelineError, OSError):
            pass  # the error that stopped the run is the one to report


def _jsonl_extras(items: list[ItemResult], known: tuple[str, ...]) -> tuple[str, ...]:
    if known:
        return ()
    return tuple(dict.fromkeys(name for item in items for name, _ in item.extra))


def _count(progress: Progress, items: list[ItemResult], shards_done: int) -> None:
    progress.rows += len(items)
    progress.by_status.update(item.status.value for item in items)
    progress.bytes += sum(item.image.bytes for item in items if item.image)
    progress.shards_done += shards_done


def _summary(catalog: Catalog, config: RunConfig, progress: Progress) -> RunSummary:
    s = catalog.summary()
    # A row the manifest made unusable failed just as surely as a 404.
    failed = s.by_status.get(Status.FAILED.value, 0) + s.by_status.get(Status.INVALID.value, 0)
    return RunSummary(
        out=config.out,
        catalog=catalog.path,
        rows=s.rows,
        by_status=s.by_status,
        by_error=s.by_error,
        shards_done=s.shards_done,
        shards_total=s.shards_total,
        this_run=progress,
        failure_rate=failed / s.rows if s.rows else 0.0,
    )
