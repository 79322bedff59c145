"""A thumbnail's stored name carries every option that changes its bytes.

Files are never rewritten (a name stands for its content), so before this a
``run --force --thumb-quality 30`` over an OUT made at 85 kept every thumbnail at 85.
Readers (dedup, export, report) take each row's path from the catalog, so catalogs made
with the older layout (``thumbs/256/ab/<sha>.jpg``) still work.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg, photo
from PIL import Image

from pipeline.cli import main
from pipeline.config import ProcessOptions
from pipeline.store.local import Store

pytestmark = pytest.mark.timeout(120)
SHA = "ab" + "0" * 62


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(jpeg(640, 480, seed=i))
    (folder / "copy.jpg").write_bytes((folder / "p0.jpg").read_bytes())  # an exact duplicate for dedup
    return folder


def _run(*args: str) -> None:
    result = CliRunner().invoke(main, ["run", *args, "--procs", "1", "-q"])
    assert result.exit_code == 0, result.output


def _thumb_paths(out: Path) -> list[str]:
    with sqlite3.connect(out / "catalog.sqlite") as db:
        return [json.loads(t)[0]["path"] for (t,) in db.execute("SELECT thumbnails FROM items ORDER BY row")]


def _tables(quality: int) -> dict[int, list[int]]:
    buffer = io.BytesIO()
    photo(64, 48, 0).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as im:
        return im.quantization


def test_force_with_another_quality_writes_new_thumbnails(tmp_path: Path) -> None:
    folder, out = _folder(tmp_path), tmp_path / "out"
    _run(str(folder), "--out", str(out))
    before = _thumb_paths(out)
    _run(str(folder), "--out", str(out), "--force", "--thumb-quality", "30")
    after = _thumb_paths(out)
    assert set(before).isdisjoint(after)
    for old, new in zip(before, after, strict=True):
        with Image.open(out / old) as a, Image.open(out / new) as b:
            assert (a.quantization, b.quantization) == (_tables(85), _tables(30))
    assert after[0].startswith("thumbs/256-q30/")


def test_names_differ_for_every_variant() -> None:
    store = Store(Path("/nowhere"))
    names = {
        store.thumb_relpath(SHA, o.sizes[0], o.thumb_ext, variant=o.thumb_variant)
        for o in (
            ProcessOptions(),
            ProcessOptions(thumb_quality=30),
            ProcessOptions(thumb_format="webp"),
            ProcessOptions(thumb_format="webp", thumb_quality=30),
            ProcessOptions(thumb_format="png"),
            ProcessOptions(sizes=(128,)),
        )
    }
    assert len(names) == 6
    assert store.thumb_relpath(SHA, 256, "jpg", variant="q85") == f"thumbs/256-q85/ab/{SHA}.jpg"
    assert store.thumb_relpath(SHA, 256, "png", variant=ProcessOptions(thumb_format="png").thumb_variant) == (
        f"thumbs/256/ab/{SHA}.png"  # PNG is lossless: quality changes nothing
    )
    for bad in ("../x", "Q85", "q 85", "a" * 17):
        with pytest.raises(ValueError, match="bad thumbnail variant"):
            store.thumb_relpath(SHA, 256, "jpg", variant=bad)


def test_a_catalog_of_the_older_layout_still_dedups_and_exports(tmp_path: Path) -> None:
    folder, out = _folder(tmp_path), tmp_path / "out"
    _run(str(folder), "--out", str(out))
    # As an older pipeline left it: thumbs/256/ab/<sha>.jpg, and the catalog says so.
    with sqlite3.connect(out / "catalog.sqlite") as db:
        for row, thumbs in db.execute("SELECT row, thumbnails FROM items").fetchall():
            listed = json.loads(thumbs)
            for t in listed:
                legacy = t["path"].replace("/256-q85/", "/256/")
                (out / legacy).parent.mkdir(parents=True, exist_ok=True)
                if not (out / legacy).exists():
                    (out / t["path"]).rename(out / legacy)
                t["path"] = legacy
            db.execute("UPDATE items SET thumbnails = ? WHERE row = ?", (json.dumps(listed), row))
    assert not any((out / "thumbs" / "256-q85").rglob("*.jpg"))
    result = CliRunner().invoke(main, ["dedup", str(out), "--report", str(out / "dups.html")])
    assert result.exit_code == 0, result.output
    assert "1 groups, 1 duplicates (1 exact)" in result.output
    exported = CliRunner().invoke(main, ["export", str(out), "--format", "jsonl"])
    assert exported.exit_code == 0, exported.output
    paths = [json.loads(line)["thumb_256"] for line in exported.output.splitlines()]
    assert all(p.startswith("thumbs/256/") and (out / p).is_file() for p in paths)
    assert "thumbs/256/" in (out / "dups.html").read_text()
