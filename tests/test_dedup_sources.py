"""``pipeline dedup`` wherever the run put things: a ``--catalog`` outside OUT, an object-store
OUT (thumbnails read back from the store, here moto's S3 on 127.0.0.1), a ``--no-thumbnails``
run (exact groups only, with a notice), and the lock each case takes.

Every run is the real CLI on a small folder of real photographs (scikit-image's samples) with
an exact copy and re-encoded copies.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from PIL import Image
from pytest_httpserver import HTTPServer
from test_out_lock import Gate, _finish, _manifest, _start

from pipeline.cli import main

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.timeout(180)

# file -> the picture it shows (files of one picture must form one group, the others none)
TRUTH = {
    "astronaut.jpg": "astronaut",
    "astronaut_copy.jpg": "astronaut",  # the same bytes
    "astronaut_half.jpg": "astronaut",  # half size, quality 80
    "coffee.jpg": "coffee",
    "coffee_q40.jpg": "coffee",  # quality 40
    "chelsea.jpg": "chelsea",
    "rocket.jpg": "rocket",
}
GROUPS = {frozenset(k for k, v in TRUTH.items() if v == p) for p in ("astronaut", "coffee")}


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage_data, name)()).convert("RGB").save(folder / f"{name}.jpg", quality=92)
    shutil.copyfile(folder / "astronaut.jpg", folder / "astronaut_copy.jpg")
    with Image.open(folder / "astronaut.jpg") as im:
        im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(
            folder / "astronaut_half.jpg", quality=80
        )
    with Image.open(folder / "coffee.jpg") as im:
        im.save(folder / "coffee_q40.jpg", quality=40)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photos(tmp_path_factory.mktemp("sources") / "photos")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _groups(path: Path) -> tuple[set[frozenset[str]], dict[str, str]]:
    """The groups in a duplicates.csv (as sets of keys) and each member's kind."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["group_id"], set()).add(r["key"])
    return {frozenset(g) for g in found.values()}, {r["key"]: r["kind"] for r in rows}


def _report_images(report: Path) -> list[Path]:
    """The local files the report's <img> elements point at (all of them must exist)."""
    text = report.read_text(encoding="utf-8")
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.DOTALL)[1]
    )
    srcs = [m["t"] for g in data["groups"] for m in g["m"]]
    assert srcs and all(srcs), "a member without an image"
    assert not any("://" in s for s in srcs), srcs  # relative to the page: opens from disk
    return [report.parent / unquote(s) for s in srcs]


# --- a --catalog outside a local OUT ---------------------------------------------------------


def test_dedup_of_a_local_out_whose_catalog_is_elsewhere(photos: Path, tmp_path: Path) -> None:
    out, catalog = tmp_path / "out", tmp_path / "driver" / "run.sqlite"
    code, output = _cli(
        "run", str(photos), "--out", str(out), "--catalog", str(catalog), "-q", "--procs", "1"
    )
    assert code == 0, output
    assert not (out / "catalog.sqlite").exists()
    report = tmp_path / "pages" / "dups.html"
    code, output = _cli("dedup", str(out), "--catalog", str(catalog), "--report", str(report))
    assert code == 0, output
    groups, kinds = _groups(out / "duplicates.csv")
    assert groups == GROUPS
    assert kinds["astronaut_copy.jpg"] == "exact" or kinds["astronaut.jpg"] == "exact"
    assert json.loads((out / "duplicates.json").read_text())["rocket.jpg"] == []
    assert f"Written: {out / 'duplicates.csv'}, {out / 'duplicates.json'}" in output
    images = _report_images(report)
    assert len(images) == 5 and all(p.is_file() for p in images)
    # Without --catalog, the run's OUT has no catalog of its own: a usage error that says so.
    code, output = _cli("dedup", str(out))
    assert code == 2 and output.startswith(f"Error: no catalog at {out / 'catalog.sqlite'}"), output
    assert "--catalog" in output
    # The catalog file given as OUT: the thumbnails' folder is unknown, say what to give.
    code, output = _cli("dedup", str(catalog))
    assert code == 2 and "--catalog" in output, output


# --- --no-thumbnails ---------------------------------------------------------------------------


def test_dedup_of_a_no_thumbnails_run_gives_exact_groups_and_a_notice(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _cli("run", str(photos), "--out", str(out), "--no-thumbnails", "-q", "--procs", "1")
    assert code == 0, output
    for verify in ("--verify", "--no-verify"):
        code, output = _cli("dedup", str(out), verify)
        assert code == 0, output
        notes = [line for line in output.splitlines() if line.startswith("Note:")]
        assert len(notes) == 1 and "--no-thumbnails" in notes[0] and "exact" in notes[0], output
        assert "Traceback" not in output and "Error" not in output
        groups, kinds = _groups(out / "duplicates.csv")
        assert groups == {frozenset({"astronaut.jpg", "astronaut_copy.jpg"})}
        assert set(kinds.values()) == {"exact"}


# --- an object-store OUT -----------------------------------------------------------------------


def test_dedup_of_an_s3_run_reads_its_thumbnails_once(
    photos: Path, s3: Any, moto: Any, tmp_path: Path
) -> None:
    driver = tmp_path / "driver"
    catalog = driver / "run1.sqlite"
    code, output = _cli(
        "run", str(photos), "--out", "s3://bucket/run1", "--catalog", str(catalog), "-q", "--procs", "1"
    )
    assert code == 0, output
    s3.invalidate_cache()
    assert s3.find("bucket/run1/thumbs")  # the thumbnails are objects, nothing local
    # OUT is a URL: the catalog must be named.
    code, output = _cli("dedup", "s3://bucket/run1")
    assert code == 2 and "--catalog" in output, output

    moto.reset_counts()
    report = tmp_path / "pages" / "dups.html"
    code, output = _cli("dedup", "s3://bucket/run1", "--catalog", str(catalog), "--report", str(report))
    assert code == 0, output
    csv_path, json_path = driver / "run1.duplicates.csv", driver / "run1.duplicates.json"
    assert f"Written: {csv_path}, {json_path}" in output
    groups, _ = _groups(csv_path)
    assert groups == GROUPS
    assert json.loads(json_path.read_text())["chelsea.jpg"] == []
    # Each thumbnail needed is read once, one GET (no HEAD), whatever the number of pairs and
    # checks: the near search at most the 6 distinct pictures', the report its 5 members'.
    assert set(moto.counts) == {"GET"} and moto.counts["GET"] <= 6 + 5, moto.counts
    # The report shows local copies of the members' thumbnails, beside the page.
    images = _report_images(report)
    assert len(images) == 5 and all(p.is_file() for p in images)
    assert all(p.resolve().is_relative_to((tmp_path / "pages").resolve()) for p in images)
    # Nothing left behind beside the catalog but the catalog and the outputs.
    sqlite_files = {"run1.sqlite-wal", "run1.sqlite-shm", "run1.sqlite.lock"}
    left = {p.name for p in driver.iterdir()} - sqlite_files
    assert left == {"run1.sqlite", csv_path.name, json_path.name}

    # --output: the files go there instead, under their usual names.
    code, output = _cli(
        "dedup", "s3://bucket/run1", "--catalog", str(catalog), "--output", str(tmp_path / "o")
    )
    assert code == 0, output
    assert _groups(tmp_path / "o" / "duplicates.csv")[0] == GROUPS

    # A thumbnail that is there but not an image: named as the object, not as its temp copy.
    first = next(iter(s3.find("bucket/run1/thumbs")))
    s3.pipe(first, b"not an image")
    code, output = _cli("dedup", "s3://bucket/run1", "--catalog", str(catalog), "--max-distance", "32")
    assert code == 1 and output.startswith(f"Error: thumbnail s3://{first} of row"), output
    assert "--no-verify" in output and ".thumbs-" not in output, output

    # A thumbnail gone from the store: an error naming the object, nothing left behind.
    s3.rm(next(iter(s3.find("bucket/run1/thumbs"))))
    code, output = _cli("dedup", "s3://bucket/run1", "--catalog", str(catalog), "--max-distance", "32")
    assert code == 1 and output.startswith("Error: thumbnail s3://bucket/run1/thumbs/"), output
    assert "missing from the store" in output and "--no-verify" in output, output
    assert {p.name for p in driver.iterdir()} - sqlite_files == left


# --- the lock ------------------------------------------------------------------------------


def test_dedup_waits_for_a_run_on_its_catalog_beside_an_object_store(
    tmp_path: Path, server: HTTPServer
) -> None:
    """A run to an fsspec OUT (``local://``, as ``s3://`` would be) holds its catalog's lock:
    dedup of that catalog stops at once, naming it, and leaves the run alone."""
    gate = Gate(server)
    manifest, catalog = (
        _manifest(tmp_path / "m.csv", server, "/slow.jpg", "/fast.jpg"),
        tmp_path / "run1.sqlite",
    )
    out = f"local://{tmp_path / 'bucket'}"
    (tmp_path / "bucket").mkdir()
    first = _start(manifest, out, "--catalog", str(catalog), "--no-thumbnails", "--no-keep-originals")
    try:
        assert gate.arrived.wait(timeout=60)
        code, output = _cli("dedup", out, "--catalog", str(catalog))
        assert code == 2, output
        assert output.startswith(f"Error: {catalog} is in use by pid {first.pid}"), output
    finally:
        gate.release.set()
    _finish(first)
    code, output = _cli("dedup", out, "--catalog", str(catalog))
    assert code == 0, output
    assert not os.path.exists(tmp_path / "bucket" / ".lock")  # nothing written into OUT
