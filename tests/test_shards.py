"""Stage 2: deterministic shard ids, lazily built."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.models import ManifestRow
from pipeline.schedule.shards import iter_shards, keep_rows


def _rows(n: int):
    return (ManifestRow(i, i + 2, str(i), f"http://a.test/{i}") for i in range(n))


@given(st.integers(0, 500), st.integers(1, 60))
def test_shards_cover_every_row_once_with_ids_from_row_numbers(n: int, size: int) -> None:
    shards = list(iter_shards(_rows(n), size))
    assert [r.row for s in shards for r in s.rows] == list(range(n))
    assert [s.shard_id for s in shards] == list(range(len(shards)))
    assert all(r.row // size == s.shard_id for s in shards for r in s.rows)
    assert all(len(s.rows) == size for s in shards[:-1])
    assert shards == list(iter_shards(_rows(n), size))  # same input, same shards


def test_shards_are_built_lazily() -> None:
    def endless():
        i = 0
        while True:
            yield ManifestRow(i, i, str(i), "http://a.test/")
            i += 1

    first = next(iter_shards(endless(), 10))
    assert len(first.rows) == 10


def test_keep_rows() -> None:
    shards = list(iter_shards(_rows(25), 10))
    kept = keep_rows(shards[1], frozenset({12, 15}))
    assert kept is not None and (kept.shard_id, [r.row for r in kept.rows]) == (1, [12, 15])
    assert keep_rows(shards[1], frozenset({3})) is None  # rows of another shard: nothing left
