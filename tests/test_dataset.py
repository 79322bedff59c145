"""Dataset outputs (issue 14): ``--output-format webdataset|parquet``, read back by the readers
people use (webdataset, pyarrow, Hugging Face datasets), against the real catalog; a run
killed with SIGKILL and rerun; an object store (moto) written one object per shard; dedup
and ``export --unique`` as a deduplicated WebDataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cluster_helpers import serve_manifest
from PIL import Image
from pytest_httpserver import HTTPServer
from rawserver import RawServer
from test_faults_process import cli_cmd, gated_images, run_cli, spawn, wait_until, write_manifest

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)
wds = pytest.importorskip("webdataset")


def _run(manifest: Path, out: str, *extra: str) -> None:
    result = CliRunner().invoke(
        main, ["run", str(manifest), "--out", out, "--allow-private", "--procs", "2", "-q", *extra]
    )
    assert result.exit_code == 0, result.output


def _catalog(path: Path) -> dict[int, sqlite3.Row]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return {r["row"]: r for r in db.execute("SELECT * FROM items")}


def _members(catalog: Path) -> dict[int, int]:
    with sqlite3.connect(catalog) as db:
        return dict(db.execute("SELECT row, part FROM dataset_samples").fetchall())


def _read_webdataset(urls: list[str]) -> list[dict[str, Any]]:
    """What a training loop sees: every sample, images decoded by webdataset itself."""
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil")
    return list(dataset)


def _raw_members(tars: list[Path]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for tar in tars:
        with tarfile.open(tar) as f:
            for member in f.getmembers():
                assert member.name not in found, f"{member.name} in two shards"
                found[member.name] = f.extractfile(member).read()  # type: ignore[union-attr]
    return found


def test_webdataset_yields_exactly_the_ok_samples_as_the_catalog_has_them(server: HTTPServer, tmp_path: Path) -> None:
    manifest = serve_manifest(server, tmp_path, images=9)
    out = tmp_path / "out"
    _run(manifest, str(out), "--output-format", "webdataset", "--samples-per-shard", "4", "--caption-column", "caption")
    rows = _catalog(out / "catalog.sqlite")
    ok = {r: row for r, row in rows.items() if row["status"] == "ok"}
    assert len(ok) == 10 and len(rows) == 13  # 9 images + the repeat; a 404, a text, a bad row

    tars = sorted((out / "dataset").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]  # 4 + 4 + 2
    stats = json.loads((out / "dataset" / "_stats.json").read_text())
    assert [s["name"] for s in stats["shards"]] == [t.name for t in tars]
    assert stats["by_status"] == {"ok": 10, "failed": 2, "invalid": 1} and stats["samples"] == 10
    assert not (out / ".tmp").exists() or not any((out / ".tmp").iterdir())  # no temp shard left

    samples = _read_webdataset([str(t) for t in tars])
    assert len(samples) == 10
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 10 and all("." not in k for k in keys)
    raw = _raw_members(tars)
    for sample in samples:
        row = ok[int(sample["__key__"])]
        record = sample["json"]
        assert (record["url"], record["key"], record["sha256"]) == (row["url"], row["key"], row["sha256"])
        assert (record["phash"], record["dhash"], record["width"], record["height"]) == (
            row["phash"], row["dhash"], row["width"], row["height"])  # fmt: skip
        assert record["status"] == "ok" and record["caption"] == sample["txt"] == f"cap {row['row']}"
        thumb = json.loads(row["thumbnails"])[0]
        assert raw[f"{sample['__key__']}.jpg"] == (out / thumb["path"]).read_bytes()
        assert isinstance(sample["jpg"], Image.Image) and sample["jpg"].size == (thumb["width"], thumb["height"])
        original = next(v for k, v in raw.items() if k.startswith(f"{sample['__key__']}.original."))
        assert hashlib.sha256(original).hexdigest() == row["sha256"]
    # The catalog says which shard holds each sample, and it is that one.
    members = _members(out / "catalog.sqlite")
    assert set(members) == set(ok)
    for part, tar in enumerate(tars):
        with tarfile.open(tar) as f:
            in_tar = {int(n.split(".")[0]) for n in f.getnames()}
        assert in_tar == {r for r, p in members.items() if p == part}

    # A rerun of a finished run changes nothing; one with another format is refused.
    before = {t.name: t.read_bytes() for t in tars}
    _run(manifest, str(out), "--output-format", "webdataset", "--samples-per-shard", "4", "--caption-column", "caption")
    assert {t.name: t.read_bytes() for t in sorted((out / "dataset").glob("*.tar"))} == before
    refused = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), "--output-format", "parquet"])
    assert refused.exit_code == 2 and "options.output_format" in refused.output

    # Dedup reads the thumbnail files; export --unique writes one sample per distinct image.
    runner = CliRunner()
    unique = ["export", str(out), "--format", "webdataset", "--unique", "-o", str(tmp_path / "u")]
    result = runner.invoke(main, unique)
    assert result.exit_code == 2 and "run `pipeline dedup" in result.output
    assert runner.invoke(main, ["dedup", str(out)]).exit_code == 0
    result = runner.invoke(main, [*unique, "--samples-per-shard", "5"])
    assert result.exit_code == 0, result.output
    exported = sorted((tmp_path / "u").glob("*.tar"))
    assert [t.name for t in exported] == ["00000.tar", "00001.tar"]
    distinct = _read_webdataset([str(p) for p in exported])
    assert len(distinct) == 9 and len({s["json"]["sha256"] for s in distinct}) == 9  # the repeated URL: once
    assert all(s["txt"] == s["json"]["caption"] for s in distinct)
    assert json.loads((tmp_path / "u" / "_stats.json").read_text())["samples"] == 9


def test_parquet_shards_read_by_pyarrow_and_hugging_face(server: HTTPServer, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    manifest = serve_manifest(server, tmp_path, images=6)
    out = tmp_path / "out"
    _run(manifest, str(out), "--output-format", "parquet", "--samples-per-shard", "3", "--sizes", "128,64",
         "--no-keep-originals")  # fmt: skip
    rows = _catalog(out / "catalog.sqlite")
    ok = {r: row for r, row in rows.items() if row["status"] == "ok"}
    files = sorted((out / "dataset").glob("*.parquet"))
    assert [f.name for f in files] == ["00000.parquet", "00001.parquet", "00002.parquet"]  # 7 ok: 3 + 3 + 1

    table = pq.read_table(out / "dataset")
    assert table.num_rows == len(ok) == 7
    assert {"__key__", "url", "sha256", "phash", "caption", "image", "image_64"} <= set(table.column_names)
    assert "original" not in table.column_names
    for record in table.to_pylist():
        row = ok[int(record["__key__"])]
        assert (record["url"], record["sha256"], record["width"]) == (row["url"], row["sha256"], row["width"])
        thumbs = {str(t["size"]): t["path"] for t in json.loads(row["thumbnails"])}
        assert record["image"] == (out / thumbs["128"]).read_bytes()
        assert record["image_64"] == (out / thumbs["64"]).read_bytes()
        assert max(Image.open(io.BytesIO(record["image_64"])).size) <= 64

    # --force with other options starts over: the old shards go, the new ones hold every sample once.
    _run(manifest, str(out), "--output-format", "parquet", "--samples-per-shard", "5", "--sizes", "128,64",
         "--no-keep-originals", "--force")  # fmt: skip
    files = sorted((out / "dataset").glob("*.parquet"))
    assert [f.name for f in files] == ["00000.parquet", "00001.parquet"]  # 5 + 2
    assert sorted(pq.read_table(out / "dataset").column("row").to_pylist()) == sorted(ok)

    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / "dataset" / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert sorted(loaded["__key__"]) == sorted(table.column("__key__").to_pylist())
    by_key = {r["__key__"]: r["image"] for r in table.to_pylist()}
    assert all(by_key[r["__key__"]] == r["image"] for r in loaded)


def test_sigkill_mid_run_leaves_whole_shards_and_the_rerun_neither_loses_nor_repeats(tmp_path: Path) -> None:
    """Killed (the whole process tree, SIGKILL) once shards are written and rows wait at the
    server: every visible shard reads whole; a stray unrecorded shard (as a kill between a
    rename and its record leaves) is gone after the rerun, which has every ok row exactly once."""
    gate = threading.Event()
    with RawServer({"/img": gated_images(gate, 13)}) as srv:
        manifest = write_manifest(tmp_path, srv, 30)
        out = tmp_path / "out"
        # The rows held at the server must neither fail (long timeouts) nor hold the host's slots.
        cmd = cli_cmd(manifest, out, "--procs", "2", "--output-format", "webdataset", "--samples-per-shard", "4",
                      "--read-timeout", "90", "--timeout", "90", "--per-host", "64")  # fmt: skip
        proc = spawn(cmd, start_new_session=True)
        try:
            wait_until(lambda: len(_parts(out)) >= 3, deadline=60, what="three shards recorded")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        for tar in (out / "dataset").glob("*.tar"):
            with tarfile.open(tar) as f:  # whole: every member reads to its end
                assert all(f.extractfile(m).read() for m in f.getmembers())  # type: ignore[union-attr]
        assert not [p for p in (out / "dataset").iterdir() if p.suffix not in (".tar", ".json")]
        (out / "dataset" / "00007.tar").write_bytes((out / "dataset" / "00000.tar").read_bytes())  # stray
        gate.set()
        final = run_cli(cmd)
        assert final.returncode == 0, final.stderr
    tars = sorted((out / "dataset").glob("*.tar"))
    stats = json.loads((out / "dataset" / "_stats.json").read_text())
    assert [s["name"] for s in stats["shards"]] == [t.name for t in tars]
    samples = _read_webdataset([str(t) for t in tars])
    assert sorted(int(s["__key__"]) for s in samples) == list(range(30))
    in_tars = {}
    for i, tar in enumerate(tars):
        with tarfile.open(tar) as f:
            in_tars.update((int(n.split(".")[0]), i) for n in f.getnames())
    assert _members(out / "catalog.sqlite") == in_tars


def _parts(out: Path) -> list[int]:
    catalog = out / "catalog.sqlite"
    if not catalog.exists():
        return []
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=5) as db:
            return [r[0] for r in db.execute("SELECT part FROM dataset_parts")]
    except sqlite3.OperationalError:
        return []  # not created yet


def test_object_store_gets_one_object_per_shard(s3: Any, moto: Any, server: HTTPServer, tmp_path: Path) -> None:
    manifest = serve_manifest(server, tmp_path, images=9)
    catalog = tmp_path / "run.sqlite"
    _run(manifest, "s3://bucket/run", "--catalog", str(catalog), "--output-format", "webdataset",
         "--samples-per-shard", "4")  # fmt: skip
    s3.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[1] for p in s3.find("bucket/run"))
    assert names == ["00000.tar", "00001.tar", "00002.tar", "_stats.json"]  # no object per image
    # Three shards, and _stats.json rewritten after each and at the end: 7 PUTs for 10 samples.
    assert moto.counts["PUT"] == 3 + 4
    local = tmp_path / "got"
    s3.get("bucket/run/dataset/", str(local), recursive=True)
    samples = _read_webdataset([str(p) for p in sorted(local.glob("*.tar"))])
    ok = {r: row for r, row in _catalog(catalog).items() if row["status"] == "ok"}
    assert {int(s["__key__"]): s["json"]["sha256"] for s in samples} == {r: row["sha256"] for r, row in ok.items()}
    # The thumbnail cache stayed local, beside the catalog: dedup reads it there.
    result = CliRunner().invoke(main, ["dedup", str(tmp_path / "run-files"), "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    assert "1 duplicates (1 exact)" in result.output
