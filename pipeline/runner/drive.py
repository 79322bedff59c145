"""Runs a manifest into OUT: locks, resume check, the executor's results into commits, the summary."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import locate
from pipeline.catalog import Catalog
from pipeline.config import FetchOptions, ProcessOptions, RunConfig
from pipeline.dataset.paths import files_root
from pipeline.dataset.writer import DatasetWriter, check_caption
from pipeline.errors import PipelineError, ResumeRefused, StorageError, UsageError
from pipeline.limits import fit_open_files
from pipeline.manifest.read import count_rows, extra_columns
from pipeline.manifest.spec import ManifestSpec, default_out, open_manifest
from pipeline.outlock import catalog_lock_path, locked, out_lock_path
from pipeline.runner.commits import Commits
from pipeline.runner.progress import Progress, ProgressCallback, RunSummary, failure_rate
from pipeline.runner.resume import WholeManifest, check_fingerprint, settle_layout
from pipeline.runner.todo import Cut, todo, work_batches
from pipeline.schedule.executors import LocalExecutor, RowExecutor
from pipeline.schedule.tracker import ShardTracker
from pipeline.store.local import open_store


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
        config = settle_layout(config, spec, catalog)
        check_caption(config, extra_columns(spec))  # before the fingerprint records it
        check_fingerprint(catalog, spec, config)
        whole = WholeManifest(spec, config.out, catalog)
        if config.force and whole.differs(catalog):  # same head and tail, other middle
            catalog.reset()
            check_fingerprint(catalog, spec, config)
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
        commits = Commits(catalog, tracker, extras, progress, on_progress, dataset)
        cut = Cut()
        work = work_batches(todo(catalog, spec, config, progress, whole, cut), tracker, commits, config.procs, cut)
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
    """Where the driver keeps the catalog: always a local file, never on an object store
    (``locate.catalog_path``: ``--catalog``, else ``OUT/catalog.sqlite`` or a partition's
    ``OUT/catalog-<i>-of-<n>.sqlite``, which ``pipeline merge`` combines)."""
    return locate.catalog_path(config.out, config.catalog, partition=config.partition, flag="--out ")


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


def _summary(catalog: Catalog, config: RunConfig, progress: Progress) -> RunSummary:
    s = catalog.summary()
    return RunSummary(
        out=config.out,
        catalog=catalog.path,
        rows=s.rows,
        by_status=s.by_status,
        by_error=s.by_error,
        shards_done=s.shards_done,
        shards_total=s.shards_total,
        this_run=progress,
        failure_rate=failure_rate(s.by_status),
    )
