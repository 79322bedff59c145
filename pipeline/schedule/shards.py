"""Stage 2: cut the row stream into shards with deterministic ids.

A shard holds rows ``[id * size, (id + 1) * size)``, so the same manifest and shard size
always give the same ids, which is what makes resume and static partitioning work.
Shards are generated lazily; the executor decides how many are in flight, and the runner
which ones still need work.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator

from pipeline.models import ManifestRow, Shard


def iter_shards(rows: Iterable[ManifestRow], shard_size: int) -> Iterator[Shard]:
    """Group consecutive rows into shards of ``shard_size`` rows (the last may be shorter)."""
    batch: list[ManifestRow] = []
    current = 0
    for row in rows:
        shard_id = row.row // shard_size
        if batch and shard_id != current:
            yield Shard(current, tuple(batch))
            batch = []
        current = shard_id
        batch.append(row)
    if batch:
        yield Shard(current, tuple(batch))


def keep_rows(shard: Shard, rows: Container[int]) -> Shard | None:
    """``shard`` with only the rows named in ``rows`` (same id), or None if none is left.

    Used by ``--retry-failed``: a done shard comes back holding only its failed rows.
    """
    kept = tuple(r for r in shard.rows if r.row in rows)
    return Shard(shard.shard_id, kept) if kept else None
