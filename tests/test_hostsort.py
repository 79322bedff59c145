"""Grouping a manifest by host before a cluster run: streamed, order-keeping, lossless."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.manifest.read import read_rows
from pipeline.manifest.spec import open_manifest
from pipeline.schedule import hostsort
from pipeline.schedule.hostsort import host_key
from pipeline.schedule.shards import iter_shards

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ["a.example.com", "img.b.org", "cdn.a.example.com", "c.net"]


def _manifest(tmp_path: Path, rows: int = 40) -> Path:
    lines = ["id,link,caption"]
    for i in range(rows):
        host = HOSTS[(i * 7) % len(HOSTS)] if i % 9 else HOSTS[0].upper()
        lines.append(f'{"" if i == 5 else f"k{i}"},https://{host}/p/{i}.jpg,"caption, {i}"')
    lines.append(",not a url,junk")
    path = tmp_path / "crawl.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_host_key_reverses_labels_so_a_site_sorts_together() -> None:
    assert host_key("https://img1.Example.com:8443/a.jpg") == "com.example.img1"
    assert host_key("/data/local.jpg") == host_key("not a url") == host_key("http://[::1") == ""


def test_group_by_host_keeps_every_row_and_fills_few_shards(tmp_path: Path) -> None:
    source = _manifest(tmp_path)
    dest = tmp_path / "sorted" / "crawl.jsonl"
    args = [
        "group-by-host",
        str(source),
        "-o",
        str(dest),
        "--chunk-rows",
        "7",
        "--url-column",
        "link",
        "--key-column",
        "id",
    ]
    result = CliRunner().invoke(main, args)  # 41 rows in chunks of 7: six sorted runs merged
    assert result.exit_code == 0, result.output
    assert "41 rows of 5 hosts written to" in result.output  # 4 hosts, and "" for the bad row
    assert not [p for p in dest.parent.iterdir() if p.name != dest.name]  # temp runs are gone

    records = [json.loads(line) for line in dest.read_text().splitlines()]
    before = {
        (r.key, r.url, r.extra) for r in read_rows(open_manifest(source, url_column="link", key_column="id"))
    }
    after_spec = open_manifest(dest, url_column="link", key_column="id")
    after_rows = list(read_rows(after_spec))
    assert {
        (r.key, r.url, r.extra) for r in after_rows
    } == before  # lossless, keys kept ("5" for the keyless row)
    assert records[0] == {"link": "not a url", "id": "40", "caption": "junk"}  # host "" sorts first

    hosts = [host_key(r["link"]) for r in records]
    runs = [h for i, h in enumerate(hosts) if i == 0 or hosts[i - 1] != h]
    assert len(runs) == len(set(runs))  # each host's rows are contiguous
    for host in set(hosts):  # manifest order kept within a host
        keys = [
            int(r.key.removeprefix("k"))
            for r in after_rows
            if host_key(r.url) == host and r.url != "not a url"
        ]
        assert keys == sorted(keys)
    # 10 rows per shard: a host of n rows now touches at most ceil(n / 10) + 1 shards.
    for host in set(hosts):
        n = hosts.count(host)
        touched = {s.shard_id for s in iter_shards(after_rows, 10) for r in s.rows if host_key(r.url) == host}
        assert len(touched) <= -(-n // 10) + 1


def _grouped(source: Path, dest: Path, chunk_rows: int) -> list[dict[str, str]]:
    args = ["group-by-host", str(source), "-o", str(dest), "--chunk-rows", str(chunk_rows)]
    args += ["--url-column", "link", "--key-column", "id"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert not [p for p in dest.parent.iterdir() if p.name != dest.name]  # every temp run is gone
    return [json.loads(line) for line in dest.read_text().splitlines()]


def test_many_chunks_merge_in_passes_of_a_few_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """41 one-row chunks, merged 3 at a time: 41 -> 14 -> 5 -> 2 runs, then the output; the
    result is the one a single merge gives."""
    source = _manifest(tmp_path)
    single = _grouped(source, tmp_path / "single" / "out.jsonl", chunk_rows=100)
    monkeypatch.setattr(hostsort, "MERGE_FILES", 3)
    passes = _grouped(source, tmp_path / "passes" / "out.jsonl", chunk_rows=1)
    assert passes == single
    hosts = [host_key(r["link"]) for r in passes]
    assert hosts == sorted(hosts)  # grouped by host; within a host, manifest order (checked above)


@pytest.mark.timeout(120)
def test_the_merge_opens_at_most_merge_files_runs_at_once(tmp_path: Path) -> None:
    """A real bound: 400 one-row chunks under `ulimit -n 100`. Opening every chunk at once
    (the old single merge) fails with "Too many open files"; passes of MERGE_FILES do not."""
    lines = ["url"] + [f"https://h{i % 13}.example.com/{i}.jpg" for i in range(400)]
    source = tmp_path / "crawl.csv"
    source.write_text("\n".join(lines) + "\n")
    dest = tmp_path / "out" / "crawl.jsonl"
    assert hostsort.MERGE_FILES + 20 < 100  # room for the merge, the output and Python itself

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    cmd = [sys.executable, "-m", "cli", "group-by-host", str(source), "-o", str(dest), "--chunk-rows", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, preexec_fn=low_limit, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "400 rows of 13 hosts written to" in done.stdout + done.stderr
    records = [json.loads(line) for line in dest.read_text().splitlines()]
    hosts = [host_key(r["url"]) for r in records]
    assert hosts == sorted(hosts) and len(records) == 400
    for host in set(hosts):  # manifest order (the key is the row number) within a host
        keys = [int(r["key"]) for r in records if host_key(r["url"]) == host]
        assert keys == sorted(keys)
