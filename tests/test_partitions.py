"""Static partitions (--num-workers/--worker-index) run as separate processes, then merged."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_helpers import catalog_rows, serve_manifest, shard_counts, stored_files
from pytest_httpserver import HTTPServer

from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.merge import find_partitions

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--procs", "1", "--shard-size", "2", "-q"]


def _start_partition(manifest: Path, out: Path, index: int, n: int = 3) -> subprocess.Popen[bytes]:
    """One partition in its own OS process, as on another machine of a Slurm array."""
    args = ["run", "--allow-private", str(manifest), "--out", str(out), "--num-workers", str(n), "--worker-index", str(index)]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args, *COMMON],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=90)
    assert process.returncode == 0, err.decode()


def test_partitions_run_apart_then_merged_equal_a_single_run(server: HTTPServer, tmp_path: Path) -> None:
    manifest = serve_manifest(server, tmp_path)
    single, shared = tmp_path / "single", tmp_path / "shared"
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--allow-private", str(manifest), "--out", str(single), *COMMON])
    assert result.exit_code == 0, result.output

    # Two of three partitions, concurrently, into the same OUT.
    for process in [_start_partition(manifest, shared, i) for i in (0, 2)]:
        _finish(process)
    assert sorted(p.name for p in shared.glob("*.sqlite")) == [
        "catalog-0-of-3.sqlite",
        "catalog-2-of-3.sqlite",
    ]
    result = runner.invoke(main, ["merge", str(shared)])
    assert result.exit_code == 3
    assert "Error: partitions missing: 1 (of 3)" in result.output

    # The late partition, and partition 0 again: rerunning an index redoes nothing.
    before = _dump(shared / "catalog-0-of-3.sqlite")  # with timestamps: a redone shard would show
    for process in [_start_partition(manifest, shared, i) for i in (1, 0)]:
        _finish(process)
    assert _dump(shared / "catalog-0-of-3.sqlite") == before
    assert {s for s, *_ in shard_counts(shared / "catalog-0-of-3.sqlite")} == {0, 3, 6}

    result = runner.invoke(main, ["merge", str(shared)])
    assert result.exit_code == 0, result.output
    assert "Merged 3 of 3 partitions" in result.output and "shards 7/7" in result.output
    merged = shared / "catalog.sqlite"
    assert catalog_rows(merged) == catalog_rows(single / "catalog.sqlite")
    assert shard_counts(merged) == shard_counts(single / "catalog.sqlite")
    assert stored_files(shared) == stored_files(single) != {}

    # Idempotent: merging again changes nothing, and status reads the merged catalog.
    snapshot = _dump(merged)
    assert runner.invoke(main, ["merge", str(shared)]).exit_code == 0
    assert _dump(merged) == snapshot
    status = runner.invoke(main, ["status", str(shared), "--json"])
    assert '"shards_total": 7' in status.output and '"shards_done": 7' in status.output


def _dump(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return [*db.execute("SELECT * FROM items ORDER BY row"), *db.execute("SELECT * FROM shards ORDER BY shard_id"),
                *db.execute("SELECT * FROM meta ORDER BY name")]  # fmt: skip


def test_merge_refuses_partitions_of_different_runs(server: HTTPServer, tmp_path: Path) -> None:
    manifest = serve_manifest(server, tmp_path, images=3)
    out = tmp_path / "out"
    runner = CliRunner()
    for index, sizes in ((0, "256"), (1, "128")):
        args = ["run", "--allow-private", str(manifest), "--out", str(out), "--num-workers", "2", "--worker-index", str(index)]
        result = runner.invoke(main, [*args, "--sizes", sizes, *COMMON])
        assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["merge", str(out)])
    assert result.exit_code == 2
    assert "Error: partitions 0 and 1" in result.output and "other options" in result.output
    assert not (out / "catalog.sqlite").exists()


def test_merge_reports_unfinished_and_renamed_partitions(tmp_path: Path, server: HTTPServer) -> None:
    manifest = serve_manifest(server, tmp_path, images=3)
    out = tmp_path / "out"
    args = ["run", "--allow-private", str(manifest), "--out", str(out), "--num-workers", "2", "--worker-index", "1", *COMMON]
    assert CliRunner().invoke(main, args).exit_code == 0
    # A partition whose run stopped before reading the whole manifest knows no total yet.
    with sqlite3.connect(out / "catalog-1-of-2.sqlite") as db:
        db.execute("DELETE FROM meta WHERE name = 'total_shards'")
    result = CliRunner().invoke(main, ["merge", str(out)])
    assert result.exit_code == 3
    assert "Error: partitions missing: 0; unfinished: 1 (of 2)" in result.output

    shutil.copy(out / "catalog-1-of-2.sqlite", out / "catalog-0-of-2.sqlite")
    result = CliRunner().invoke(main, ["merge", str(out)])
    assert result.exit_code == 2 and "was it renamed?" in result.output


def test_find_partitions_needs_one_consistent_set(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no partition catalogs"):
        find_partitions(tmp_path)
    (tmp_path / "catalog-0-of-2.sqlite").touch()
    (tmp_path / "catalog-0-of-3.sqlite").touch()
    with pytest.raises(UsageError, match=r"different --partitions \(2, 3\)"):
        find_partitions(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-workers", "3", "--worker-index", "3"], "--worker-index must be in 0 .. --num-workers - 1"),
        (["--num-workers", "0"], "--num-workers must be at least 1"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
        (["--out", "s3://bucket/run"], "--out s3://bucket/run is not a local folder: give --catalog PATH"),
        (["--out", "memory://run", "--catalog", "c.sqlite"], "--out memory://… is private to each process"),
    ],
)
def test_cluster_options_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text("http://127.0.0.1:9/a.jpg\n")
    base = ["run", "--allow-private", str(manifest), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*base, *args, "-q"])
    assert result.exit_code == 2
    assert f"Error: {message}" in result.output


def test_executor_ray_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    """Ray missing must stop the run with exit 2, never fall back to the local pool."""
    manifest = tmp_path / "m.txt"
    manifest.write_text("http://127.0.0.1:9/a.jpg\n")
    # sys.modules["ray"] = None makes `import ray` raise ImportError, as if not installed.
    code = "import sys; sys.modules['ray'] = None; from cli import main; main()"
    args = ["run", "--allow-private", str(manifest), "--out", str(tmp_path / "out"), "--executor", "ray", "-q"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert b"Error: --executor ray needs Ray, which is not installed" in result.stderr
    assert b"pip install 'pipeline[ray]'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_partitions_sharing_out_never_clear_each_others_temp_files(tmp_path: Path) -> None:
    from pipeline.store.local import open_store

    first, second = open_store(tmp_path, partition="0-of-2"), open_store(tmp_path, partition="1-of-2")
    with first.atomic_path(first.original_relpath("ab" + "0" * 62, "jpg")) as in_flight:
        second.clear_temp()  # partition 1 (re)starts while partition 0 is writing
        assert in_flight.exists()
        in_flight.write_bytes(b"jpeg")
    assert (tmp_path / "originals" / "ab" / ("ab" + "0" * 62 + ".jpg")).read_bytes() == b"jpeg"
