"""Grouping a manifest by host before a cluster run: streamed, order-keeping, lossless."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import main
from pipeline.hostsort import host_key
from pipeline.manifest import open_manifest, read_rows
from pipeline.shards import iter_shards

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
