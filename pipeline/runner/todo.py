"""The work a run still has: the manifest's shards not yet done, streamed as the batches workers receive."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.catalog import Catalog
from pipeline.config import RunConfig
from pipeline.errors import ManifestTruncated
from pipeline.layout import name_rows
from pipeline.manifest.read import read_rows
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow, Shard, ShardDone
from pipeline.runner.commits import Commits
from pipeline.runner.progress import Progress
from pipeline.runner.resume import WholeManifest
from pipeline.schedule.batches import batch_size, batches
from pipeline.schedule.shards import iter_shards, keep_rows
from pipeline.schedule.tracker import ShardTracker
from pipeline.worker.items import invalid_item


@dataclass(slots=True)
class Cut:
    """Where the manifest stopped being readable, if it did (a truncated .gz). The rows read
    before the cut still run and are committed; then the run raises this error. The shard
    the cut falls in gets no done mark (its rows after the cut were never seen)."""

    error: ManifestTruncated | None = None


def _until_cut(rows: Iterable[ManifestRow], cut: Cut) -> Iterator[ManifestRow]:
    try:
        yield from rows
    except ManifestTruncated as exc:
        cut.error = exc


def todo(
    catalog: Catalog, spec: ManifestSpec, config: RunConfig, progress: Progress, whole: WholeManifest, cut: Cut
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


def work_batches(
    shards: Iterator[Shard], tracker: ShardTracker, commits: Commits, procs: int, cut: Cut
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
