"""Outputs on an object store: the real S3 protocol against moto's server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cluster_helpers import catalog_rows, serve_manifest, stored_files
from pytest_httpserver import HTTPServer

from cli import main
from pipeline.store import open_store

fsspec = pytest.importorskip("fsspec")
pytestmark = pytest.mark.timeout(120)
SHA = "ab" + "0" * 62


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    moto = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        moto.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An s3fs filesystem on the test server; worker processes inherit the same env."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    yield fs
    fs.rm("bucket", recursive=True)


def test_run_to_s3_writes_the_same_objects_and_rows_as_a_local_run(
    s3: Any, server: HTTPServer, tmp_path: Path
) -> None:
    manifest = serve_manifest(server, tmp_path, images=5)
    common = ["--procs", "1", "--shard-size", "3", "-q"]
    runner = CliRunner()
    local = tmp_path / "local"
    assert runner.invoke(main, ["run", "--allow-private", str(manifest), "--out", str(local), *common]).exit_code == 0
    catalog = tmp_path / "driver" / "run1.sqlite"
    args = ["run", "--allow-private", str(manifest), "--out", "s3://bucket/run1", "--catalog", str(catalog), *common]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output

    assert catalog_rows(catalog) == catalog_rows(local / "catalog.sqlite")
    s3.invalidate_cache()
    remote = {
        key.removeprefix("bucket/run1/"): hashlib.sha256(s3.cat_file(key)).hexdigest()
        for key in s3.find("bucket/run1")
    }
    assert remote == stored_files(local) != {}  # no temp objects, nothing else

    # Resume against the object store: every shard is done, nothing is fetched again.
    hits = len(server.log)
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(server.log) == hits

    # status and export take the driver's catalog file when OUT is not a local folder.
    status = runner.invoke(main, ["status", str(catalog), "--json"])
    counts = json.loads(status.output)["by_status"]
    assert status.exit_code == 0 and counts == {"ok": 6, "failed": 2, "invalid": 1}
    exported = runner.invoke(main, ["export", str(catalog), "-f", "jsonl"]).output.splitlines()
    assert [json.loads(line)["key"] for line in exported] == [r["key"] for r in catalog_rows(catalog)]


def test_missing_bucket_stops_the_run(s3: Any, server: HTTPServer, tmp_path: Path) -> None:
    manifest = serve_manifest(server, tmp_path, images=2)
    args = ["run", "--allow-private", str(manifest), "--out", "s3://no-such-bucket/run", "--catalog", str(tmp_path / "c.sqlite")]
    result = CliRunner().invoke(main, [*args, "--procs", "1", "-q"])
    assert result.exit_code == 1
    assert "Error: cannot write to s3://no-such-bucket/run: FileNotFoundError" in result.output


def test_memory_store_writes_whole_objects_under_content_names() -> None:
    store = open_store("memory://pipeline-test/run")
    fs = fsspec.filesystem("memory")
    rel = store.thumb_relpath(SHA, 256, "jpg")
    assert not store.exists(rel)
    with store.atomic_path(rel) as tmp:
        assert tmp.suffix == ".jpg" and tmp.is_file()
        tmp.write_bytes(b"thumb")
    assert not tmp.exists()  # the local temp file is gone once uploaded
    assert store.exists(rel) and fs.cat_file(f"/pipeline-test/run/{rel}") == b"thumb"
    store.write_bytes(store.original_relpath(SHA, "png"), b"original")
    store.write_bytes(store.original_relpath(SHA, "png"), b"ignored: content-addressed, already there")
    assert fs.cat_file(f"/pipeline-test/run/originals/ab/{SHA}.png") == b"original"
    assert store.url_of(rel) == f"memory://pipeline-test/run/{rel}"


def test_memory_store_failed_write_leaves_nothing() -> None:
    store = open_store("memory://pipeline-test/failed")
    rel = store.thumb_relpath(SHA, 128, "webp")
    with pytest.raises(RuntimeError), store.atomic_path(rel) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("encoder crashed")
    assert not tmp.exists() and not store.exists(rel)
    for bad in ("../x", "/etc/passwd", ".tmp/x", ""):
        with pytest.raises(ValueError):
            store.exists(bad)
