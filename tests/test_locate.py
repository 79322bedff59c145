"""Every command names a run the same ways (pipeline/locate.py): OUT, OUT --catalog FILE, the
catalog FILE alone where only the catalog is read, and the same usage errors (exit 2) for
what cannot be a run. Each case is the real CLI on a small folder of JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg

from cli import main
from pipeline.locate import catalog_path, find_run

pytestmark = pytest.mark.timeout(180)
RUN = ["--procs", "1", "-q"]
# The commands that read a run, with what each needs after OUT (dedup writes beside OUT).
READERS = {"status": ["--json"], "export": ["-f", "jsonl"], "dedup": ["--no-verify"]}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run into OUT (catalog inside), and one with its catalog elsewhere (--catalog)."""
    root = tmp_path_factory.mktemp("runs")
    photos = root / "photos"
    photos.mkdir()
    for seed in range(3):
        (photos / f"p{seed}.jpg").write_bytes(jpeg(160, 120, seed=seed))
    (photos / "copy.jpg").write_bytes(jpeg(160, 120, seed=0))
    inside, outside, catalog = root / "inside", root / "outside", root / "elsewhere" / "run.sqlite"
    assert _cli("run", str(photos), "--out", str(inside), *RUN) == (0, "")
    assert _cli("run", str(photos), "--out", str(outside), "--catalog", str(catalog), *RUN) == (0, "")
    return {"inside": inside, "outside": outside, "catalog": catalog}


@pytest.mark.parametrize("command", sorted(READERS))
def test_out_and_out_with_its_catalog(runs: dict[str, Path], command: str) -> None:
    code, output = _cli(command, str(runs["inside"]), *READERS[command])
    assert code == 0, output
    code, output = _cli(command, str(runs["outside"]), "--catalog", str(runs["catalog"]), *READERS[command])
    assert code == 0, output
    if command == "status":
        assert json.loads(output)["rows"] == 4


@pytest.mark.parametrize("command", ["status", "export"])
def test_the_catalog_file_alone_where_only_the_catalog_is_read(runs: dict[str, Path], command: str) -> None:
    for catalog in (runs["inside"] / "catalog.sqlite", runs["catalog"]):
        code, output = _cli(command, str(catalog), *READERS[command])
        assert code == 0, output


def test_dedup_needs_out_not_the_catalog_file(runs: dict[str, Path]) -> None:
    code, output = _cli("dedup", str(runs["catalog"]))
    assert code == 2
    assert output == (
        f"Error: {runs['catalog']} is a file: give the run's OUT (where its thumbnails are) "
        f"and the catalog as --catalog {runs['catalog']}\n"
    )


@pytest.mark.parametrize("command", ["status", "export"])
def test_an_object_store_out_with_its_catalog(runs: dict[str, Path], command: str) -> None:
    """Status and export read only the catalog: the store is not touched (no server here).
    Dedup reads the store's thumbnails: tests/test_dedup_sources.py, on moto's S3."""
    code, output = _cli(command, "s3://bucket/run", "--catalog", str(runs["catalog"]), *READERS[command])
    assert code == 0, output


@pytest.mark.parametrize("command", [*sorted(READERS), "run"])
@pytest.mark.parametrize(
    ("out", "catalog", "message"),
    [
        ("s3://bucket/run", None, "s3://bucket/run is not a local folder: give --catalog PATH, the run's SQLite catalog"),
        ("memory://run", "c.sqlite", "memory://… is private to each process; use a folder or s3://, gs://"),
    ],
)
def test_the_same_usage_errors_everywhere(
    tmp_path: Path, command: str, out: str, catalog: str | None, message: str
) -> None:
    extra = ["--catalog", str(tmp_path / catalog)] if catalog else []
    if command == "run":
        manifest = tmp_path / "m.txt"
        manifest.write_text("http://127.0.0.1:9/a.jpg\n")
        code, output = _cli("run", str(manifest), "--out", out, *extra, *RUN)
        message = f"--out {message}"
    else:
        code, output = _cli(command, out, *extra)
    assert (code, output) == (2, f"Error: {message}\n")


@pytest.mark.parametrize("command", sorted(READERS))
def test_no_run_there(tmp_path: Path, command: str) -> None:
    code, output = _cli(command, str(tmp_path / "nowhere"))
    assert (code, output) == (2, f"Error: no folder {tmp_path / 'nowhere'}: give the run's OUT\n")
    code, output = _cli(command, str(tmp_path), "--catalog", str(tmp_path / "none.sqlite"))
    assert (code, output) == (2, f"Error: no catalog at {tmp_path / 'none.sqlite'}: is this a pipeline output folder?\n")


def test_run_merge_and_readers_agree_on_the_place(tmp_path: Path) -> None:
    """The catalog `pipeline run` writes (and `merge` writes for partitions) is the one the readers find."""
    assert catalog_path(tmp_path) == tmp_path / "catalog.sqlite"
    assert catalog_path(tmp_path, partition="1-of-3") == tmp_path / "catalog-1-of-3.sqlite"
    assert catalog_path("s3://b/run", tmp_path / "c.sqlite") == tmp_path / "c.sqlite"
    catalog_path(tmp_path).touch()
    place = find_run(tmp_path)
    assert (place.out, place.catalog, place.remote) == (tmp_path, tmp_path / "catalog.sqlite", False)
    assert find_run(tmp_path / "catalog.sqlite").out == tmp_path
    remote = find_run("s3://b/run/", tmp_path / "catalog.sqlite")
    assert (remote.out, remote.remote) == ("s3://b/run", True)
