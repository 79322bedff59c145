"""Stage 6: the SQLite catalog: rows committed as they finish, done marks with a shard's last row, schema versioning, resume state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.catalog import MIGRATIONS, Catalog
from pipeline.errors import CatalogError, ErrorClass, UsageError
from pipeline.models import ImageInfo, ItemResult, ShardDone, ShardReport, Status, Thumbnail


def _image(sha: str) -> ImageInfo:
    thumb = Thumbnail(256, 256, 192, f"thumbs/256/{sha[:2]}/{sha}.jpg")
    return ImageInfo(sha, 1234, "JPEG", "RGB", 640, 480, 1, "0f" * 8, "f0" * 8, (thumb,), None, 3.5)


def _report(shard_id: int, rows: range, failed: set[int] = frozenset()) -> ShardReport:
    items = []
    for r in rows:
        if r in failed:
            items.append(ItemResult(r, str(r), f"http://a.test/{r}", Status.FAILED, ErrorClass.HTTP_4XX, "HTTP 404", http_status=404, attempts=1))
        else:
            items.append(ItemResult(r, str(r), f"http://a.test/{r}", Status.OK, image=_image(f"{r:064x}"), attempts=1, extra=(("caption", f"c{r}"),)))
    return ShardReport(shard_id, items, fetched=len(items), bytes_downloaded=1234 * len(items))


def test_write_shard_commits_rows_and_done_mark_together(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.write_shard(_report(0, range(10), failed={3}), extra_columns=("caption",))
        cat.write_shard(_report(2, range(20, 25)))
        assert cat.done_shards() == {0, 2}
        assert cat.shards_with_failures() == {0}
        assert cat.failed_rows(0) == frozenset({3}) and cat.failed_rows(2) == frozenset()
        s = cat.summary()
        assert s.rows == 15 and s.by_status == {"ok": 14, "failed": 1} and s.by_error == {"http_4xx": 1}
        assert cat.get_meta("extra_columns") == ["caption"]
    # Another connection (another process) sees the committed state in the real file.
    db = sqlite3.connect(tmp_path / "c.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT ok, failed FROM shards WHERE shard_id = 0").fetchone() == (9, 1)
    row = db.execute("SELECT sha256, width, thumbnails, extra FROM items WHERE row = 4").fetchone()
    assert row[0] == f"{4:064x}" and row[1] == 640 and '"size": 256' in row[2] and row[3] == '{"caption": "c4"}'


def test_rows_commit_before_their_shard_is_done_and_resume_sees_them(tmp_path: Path) -> None:
    """Rows of shard 0 arrive in two commits; only the second, with the last row, marks it
    done. In between, the shard is 'started': a resumed run asks which rows it has."""
    items = _report(0, range(6)).items
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.write_rows([(0, item) for item in items[:4]])
        assert cat.done_shards() == set() and cat.started_shards() == {0}
        assert cat.committed_rows(0) == frozenset(range(4))
        cat.write_rows([(0, item) for item in items[4:]], [ShardDone(0, fetched=6, bytes_downloaded=99, worker_pid=7)])
        assert cat.done_shards() == {0} and cat.started_shards() == set()
    db = sqlite3.connect(tmp_path / "c.sqlite")
    # Counts and bytes come from the shard's rows in items, not from the last invocation's mark.
    nbytes = sum(item.image.bytes for item in items if item.image)
    assert db.execute("SELECT rows, ok, failed, fetched, bytes, worker_pid FROM shards").fetchone() == (
        6, 6, 0, 6, nbytes, 7
    )  # fmt: skip


def test_a_failing_shard_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        bad = _report(1, range(10, 12))
        bad.items[1].status = None  # type: ignore[assignment]  # breaks half-way through
        with pytest.raises(AttributeError):
            cat.write_shard(bad)
        assert cat.done_shards() == set()
        assert cat.summary().rows == 0


def test_retry_report_replaces_rows_and_recounts_the_shard(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.write_shard(_report(0, range(5), failed={1, 2}))
        cat.write_shard(_report(0, range(1, 3)))  # --retry-failed brought back rows 1 and 2 as ok
        assert cat.summary().by_status == {"ok": 5}
        assert tuple(cat.db.execute("SELECT rows, ok, failed FROM shards").fetchone()) == (5, 5, 0)


def test_newer_schema_and_garbage_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="newer pipeline"):
        Catalog(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="cannot open catalog"):
        Catalog(junk)
    with pytest.raises(UsageError, match="no catalog"):  # a wrong argument, not a broken file
        Catalog(tmp_path / "missing.sqlite", readonly=True)


def test_reset_forgets_rows_shards_and_fingerprint(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.set_meta("fingerprint", {"a": 1})
        cat.write_shard(_report(0, range(3)))
        cat.reset()
        assert cat.summary().rows == 0 and cat.done_shards() == set() and cat.get_meta("fingerprint") is None
