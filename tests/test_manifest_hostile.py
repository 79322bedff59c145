"""Hostile manifests (issue 11): a bad row is `invalid` with its line and reason, never a crash;
a manifest cut short runs and commits the rows before the cut, then stops with exit 1."""

from __future__ import annotations

import gzip
import json
import pickle
import sqlite3
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import jpeg
from pytest_httpserver import HTTPServer

from pipeline.cli import main
from pipeline.errors import ErrorClass, ManifestError, ManifestTruncated
from pipeline.manifest.read import read_rows
from pipeline.manifest.spec import open_manifest
from pipeline.models import Shard
from pipeline.runner import build_config
from pipeline.worker.protocol import run_shard

CAPTION = "A red bicycle leaning on a wall at golden hour; 35 mm; shallow depth of field " * 5  # > 255 bytes
HUGE = "x" * (2 << 20)  # a 2 MB cell


def _rows(path: Path, **kw):
    return list(read_rows(open_manifest(path, **kw)))


def _catalog(out: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM items ORDER BY row"))
    finally:
        db.close()


# --- the reader: every hostile cell is an invalid row with a reason ---------------------------


def test_a_caption_in_the_url_column_is_invalid_not_a_file_name_too_long_crash(tmp_path: Path) -> None:
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    m = tmp_path / "m.csv"
    m.write_text(f'url,caption\n"{CAPTION}",pasted\nloop.jpg,loops\n{HUGE},huge\nhttp://ok.test/a.jpg,fine\n')
    rows = _rows(m)
    assert "File name too long" in rows[0].invalid
    assert "symlink loop" in rows[1].invalid or "Too many levels of symbolic links" in rows[1].invalid
    assert "File name too long" in rows[2].invalid
    assert rows[3].invalid is None
    assert [r.line for r in rows] == [2, 3, 4, 5]


def test_jsonl_huge_numbers_arrays_and_non_string_urls_are_invalid(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    lines = [
        '{"url": ' + "7" * 5000 + "}",
        '{"url": "http://ok.test/a.jpg", "n": ' + "9" * 5000 + "}",
        json.dumps(["http://ok.test/a.jpg"]),
        json.dumps({"url": 5}),
        json.dumps({"url": None}),
        json.dumps({"url": ["http://ok.test/a.jpg"]}),
        "[" * 100_000,
        '{"url": "http://ok.test/\\ud800.jpg"}',  # valid JSON, a lone surrogate: SQLite refuses it
        '{"url": "http://ok.test/b.jpg", "caption": "bad \\udcff"}',
        json.dumps({"url": "http://ok.test/c.jpg", "key": 3}),
    ]
    m.write_text("\n".join(lines) + "\n")
    rows = _rows(m)
    reasons = [r.invalid for r in rows]
    assert "malformed JSON" in reasons[0] and "digits" in reasons[0]
    assert "malformed JSON" in reasons[1]
    assert reasons[2] == "malformed row: not a JSON object"
    assert reasons[3] == "'url' is not a string (int)"
    assert reasons[4] == "empty url"
    assert reasons[5] == "'url' is not a string (list)"
    assert reasons[6] == "malformed JSON: nested too deeply"
    assert reasons[7] == "url is not valid UTF-8" and rows[7].url == "http://ok.test/\ufffd.jpg"
    assert reasons[8] == "column 'caption' is not valid UTF-8" and rows[8].extra == (
        ("caption", "bad \ufffd"),
    )
    assert reasons[9] is None and rows[9].key == "3"
    assert [r.line for r in rows] == list(range(1, 11))


def test_bad_bytes_nul_bad_hosts_and_an_unclosed_quote_are_invalid(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes(
        b"key,url,caption\n"
        b"a,http://ok.test/\xff.jpg,x\n"
        b"b,http://ok.test/b.jpg,caf\xe9\n"
        b"c\xfe,http://ok.test/c.jpg,x\n"
        b"d,http://ok.test/d\x00.jpg,x\n"
        b"e,http://[::1/x,x\n"
        b"f,http://ok.test:99999/f.jpg,x\n"
        b"g,http://user@:80/,x\n"
        b"h,http://ok.test/h.jpg,fine\n"
        b'i,"http://ok.test/i.jpg,unclosed\n'
    )
    rows = _rows(m)
    reasons = [r.invalid for r in rows]
    assert reasons[0] == "url is not valid UTF-8"
    assert reasons[1] == "column 'caption' is not valid UTF-8"
    assert reasons[2] == "column 'key' is not valid UTF-8"
    assert reasons[3] == "url contains control characters"
    assert "malformed url" in reasons[4]
    assert "malformed url" in reasons[5] and "Port out of range" in reasons[5]
    assert "no host" in reasons[6]
    assert reasons[7] is None
    assert "malformed row" in reasons[8]
    for r in rows:  # every text can go into SQLite (no lone surrogates left)
        for text in (r.url, r.key, *(v for kv in r.extra for v in kv)):
            text.encode("utf-8")


def test_parquet_url_columns_of_integers_or_binary(tmp_path: Path) -> None:
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"url": pa.array([1, None, 3], pa.int64()), "n": [1, 2, 3]}), ints)
    rows = _rows(ints)
    assert [r.invalid for r in rows] == [
        "'url' is not a string (int)",
        "empty url",
        "'url' is not a string (int)",
    ]

    binary = tmp_path / "bin.parquet"
    cells = [b"http://ok.test/a.jpg", b"http://ok.test/\xff.jpg", None, "http://ok.test/é.jpg".encode()]
    captions = [b"fine", b"fine", b"fine", b"caf\xe9"]
    pq.write_table(
        pa.table({"url": pa.array(cells, pa.binary()), "caption": pa.array(captions, pa.binary())}), binary
    )
    rows = _rows(binary)
    assert (
        rows[0].invalid is None
        and rows[0].url == "http://ok.test/a.jpg"
        and rows[0].extra == (("caption", "fine"),)
    )
    assert rows[1].invalid == "url is not valid UTF-8"
    assert rows[2].invalid == "empty url"
    assert rows[3].invalid == "column 'caption' is not valid UTF-8" and rows[3].url == "http://ok.test/é.jpg"


def test_a_file_that_is_not_gzip_or_not_parquet_is_a_manifest_error(tmp_path: Path) -> None:
    fake_gz = tmp_path / "m.csv.gz"
    fake_gz.write_bytes(b"url\nhttp://ok.test/a.jpg\n")
    with pytest.raises(ManifestError, match="Not a gzipped file"):
        _rows(fake_gz)
    fake_pq = tmp_path / "m.parquet"
    fake_pq.write_bytes(b"url\nhttp://ok.test/a.jpg\n")
    with pytest.raises(ManifestError, match="as Parquet"):
        _rows(fake_pq)


def _cut_gzip(path: Path, lines: list[bytes], keep: float = 0.5) -> int:
    """Write ``lines`` gzipped and cut in the middle; returns how many whole lines survive."""
    data = gzip.compress(b"".join(lines), mtime=0)
    cut = data[: int(len(data) * keep)]
    path.write_bytes(cut)
    return zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")


def test_a_truncated_gzip_yields_the_rows_before_the_cut_then_raises(tmp_path: Path) -> None:
    m = tmp_path / "m.txt.gz"
    whole = _cut_gzip(m, [b"http://ok.test/%d.jpg\n" % i for i in range(5000)])
    assert 0 < whole < 5000
    got = []
    with pytest.raises(ManifestTruncated) as caught:
        got.extend(read_rows(open_manifest(m)))  # what was yielded before the raise stays in got
    assert len(got) == whole and got[-1].url == f"http://ok.test/{whole - 1}.jpg"
    assert (
        str(caught.value)
        == f"manifest m.txt.gz is truncated after line {whole} (compressed stream ended early)"
    )
    assert caught.value.line == whole
    back = pickle.loads(pickle.dumps(caught.value))  # crosses processes like every error
    assert (
        type(back) is ManifestTruncated and str(back) == str(caught.value) and back.args == caught.value.args
    )


# --- the CLI: a hostile manifest of each format runs to the end --------------------------------


def _hostile(tmp_path: Path, server: HTTPServer, kind: str) -> tuple[Path, dict[str, str]]:
    """A manifest of ``kind`` whose good rows are a local file and an URL on 127.0.0.1, and
    whose other rows are hostile; returns it and the status expected for each key."""
    server.expect_request("/good.jpg").respond_with_data(jpeg(64, 48), content_type="image/jpeg")
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "ok.jpg").write_bytes(jpeg(80, 60, seed=1))
    (tmp_path / "img" / "loop.jpg").symlink_to(tmp_path / "img" / "loop.jpg")
    good = {"local": "img/ok.jpg", "http": server.url_for("/good.jpg")}
    bad: dict[str, object] = {
        "caption": CAPTION,
        "huge": HUGE,
        "badbytes": b"http://ok.test/\xff\xfe.jpg",
        "nul": "http://ok.test/a\x00.jpg",
        "ipv6": "http://[::1/x",
        "port": "http://ok.test:99999/a.jpg",
        "nohost": "http://user@:80/",
        "loop": "img/loop.jpg",
        "outside": "../../etc/passwd",
    }
    expected = {k: "ok" for k in good} | {k: "invalid" for k in bad}
    cells = list(good.items()) + list(bad.items())
    base = kind.removesuffix(".gz")
    if base == "parquet":
        urls = [v.encode() if isinstance(v, str) else v for _, v in cells]
        table = pa.table({"key": [k for k, _ in cells], "url": pa.array(urls, pa.binary())})
        pq.write_table(table, tmp_path / "m.parquet")
        return tmp_path / "m.parquet", expected

    def raw(v: object) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode()

    if base in ("csv", "tsv"):
        sep = b"," if base == "csv" else b"\t"
        body = b"key" + sep + b"url\n" + b"".join(k.encode() + sep + raw(v) + b"\n" for k, v in cells)
        body += b"unclosed" + sep + b'"http://ok.test/u.jpg\n'  # a quote never closed, at the end
        expected[str(len(cells))] = "invalid"  # a row the csv module cannot split is keyed by its number
    elif base == "txt":  # no keys: the row number is the key
        body = b"".join(raw(v) + b"\n" for _, v in cells)
        expected = {str(i): expected[k] for i, (k, _) in enumerate(cells)}
    else:  # jsonl; a line that is not an object with a string url is keyed by its row number
        lines = [json.dumps({"key": k, "url": v}).encode() for k, v in cells if not isinstance(v, bytes)]
        lines += [b'{"key": "badbytes", "url": "http://ok.test/\xff.jpg"}']  # row 10
        lines += [
            b'{"key": "bigint", "url": ' + b"7" * 5000 + b"}",
            b'["array"]',
            b'{"key": "num", "url": 5}',
        ]
        lines += [b'{"key": "null", "url": null}', b"[" * 100_000]  # rows 14, 15
        body = b"\n".join(lines) + b"\n"
        expected |= {"11": "invalid", "12": "invalid", "13": "invalid", "null": "invalid", "15": "invalid"}
    path = tmp_path / f"m.{kind}"
    path.write_bytes(gzip.compress(body) if kind.endswith(".gz") else body)
    return path, expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kind", ["csv", "tsv", "txt", "jsonl", "parquet", "csv.gz", "tsv.gz", "txt.gz", "jsonl.gz"]
)
def test_cli_runs_a_hostile_manifest_of_every_format_to_the_end(
    tmp_path: Path, server: HTTPServer, kind: str
) -> None:
    manifest, expected = _hostile(tmp_path, server, kind)
    out = tmp_path / "out"
    args = [
        "run",
        str(manifest),
        "-o",
        str(out),
        "--procs",
        "1",
        "--allow-private",
        "--local-root",
        str(tmp_path),
    ]
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    rows = _catalog(out)
    got = {r["key"]: r["status"] for r in rows}
    assert got == expected, {r["key"]: r["error_message"] for r in rows}
    for r in rows:
        if r["status"] == "invalid":
            assert r["error_class"] == "invalid" and r["error_message"].startswith("line ")


@pytest.mark.timeout(120)
def test_cli_folder_with_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(jpeg(40, 30))
    with open(bytes(folder) + b"/bad\xff.jpg", "wb") as f:  # a name from another encoding
        f.write(jpeg(40, 30, seed=1))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(folder), "-o", str(out), "--procs", "1"])
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    got = {r["key"]: (r["status"], r["error_message"]) for r in _catalog(out)}
    assert got == {"bad\ufffd.jpg": ("invalid", "line 1: url is not valid UTF-8"), "ok.jpg": ("ok", None)}


# --- a manifest cut short: rows before the cut are committed, then exit 1 ----------------------


@pytest.mark.timeout(120)
def test_cli_truncated_gzip_commits_the_rows_before_the_cut_exits_1_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(40, 30, seed=i))
    manifest = tmp_path / "m.csv.gz"
    lines = [b"key,url\n"] + [b"k%d,img/%d.jpg\n" % (i, i % 4) for i in range(2000)]
    whole = _cut_gzip(manifest, lines, keep=0.6)
    rows_read = whole - 1  # the header is line 1
    assert 100 < rows_read < 2000 and rows_read % 64  # the cut falls inside a shard
    out = tmp_path / "out"
    args = ["run", str(manifest), "-o", str(out), "--procs", "1", "--shard-size", "64", "-q"]

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    message = f"Error: manifest m.csv.gz is truncated after line {whole} (compressed stream ended early)"
    assert message in result.output
    rows = _catalog(out)
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(rows_read)]
    assert {r["status"] for r in rows} == {"ok"}
    db = sqlite3.connect(out / "catalog.sqlite")
    done = {shard for (shard,) in db.execute("SELECT shard_id FROM shards")}
    db.close()
    assert done == set(range(rows_read // 64))  # the shard the cut fell in is not done

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and message in again.output
    after = _catalog(out)
    assert [(r["row"], r["updated_at"]) for r in after] == [
        (r["row"], r["updated_at"]) for r in rows
    ]  # nothing redone


# --- one rule for `invalid` ---------------------------------------------------------------------


def test_a_local_file_that_cannot_be_read_is_invalid_like_a_missing_one(tmp_path: Path) -> None:
    """The manifest reader calls a missing file `invalid/invalid`; a file that vanishes or turns
    into a directory before the worker reads it is the same unusable row (README, "status")."""
    for name in ("gone.jpg", "dir.jpg", "ok.jpg"):
        (tmp_path / name).write_bytes(jpeg(40, 30))
    m = tmp_path / "m.txt"
    m.write_text("gone.jpg\ndir.jpg\nok.jpg\nmissing.jpg\n")
    rows = _rows(m)
    assert [r.invalid for r in rows] == [None, None, None, "no such local file"]
    (tmp_path / "gone.jpg").unlink()  # after the manifest was read, before the worker reads it
    (tmp_path / "dir.jpg").unlink()
    (tmp_path / "dir.jpg").mkdir()
    config = build_config(tmp_path / "out", local_root=tmp_path)
    report = run_shard(Shard(0, tuple(r for r in rows if r.invalid is None)), config)
    got = {item.key: (item.status.value, item.error_class) for item in report.items}
    assert got == {
        "0": ("invalid", ErrorClass.INVALID),
        "1": ("invalid", ErrorClass.INVALID),
        "2": ("ok", None),
    }
    messages = {item.key: item.error_message for item in report.items}
    assert "No such file" in messages["0"] and "Is a directory" in messages["1"]
