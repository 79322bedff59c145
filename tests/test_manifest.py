"""Stage 1: every manifest format, streamed, with bad rows recorded rather than fatal."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError
from pipeline.manifest.read import extra_columns, identity, read_rows
from pipeline.manifest.rows import resolve_source
from pipeline.manifest.spec import default_out, open_manifest


def _rows(path: Path, **kw):
    return list(read_rows(open_manifest(path, **kw)))


def test_csv_keeps_extra_columns_keys_and_line_numbers(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text('key,url,caption\na,http://x.test/1.jpg,"a cat"\nb,https://x.test/2.jpg,"two\nlines"\nc,http://x.test/3.jpg,dog\n')
    rows = _rows(m)
    assert [r.key for r in rows] == ["a", "b", "c"]
    assert [r.row for r in rows] == [0, 1, 2]
    assert rows[1].extra == (("caption", "two\nlines"),)
    assert rows[2].line == 5  # the quoted newline takes a physical line
    assert all(r.invalid is None and r.source == r.url for r in rows)
    assert extra_columns(open_manifest(m)) == ("caption",)


def test_bad_rows_are_invalid_with_reason_and_the_rest_goes_on(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text(
        "url,caption\n"
        ",empty\n"
        "ftp://example.com/x.jpg,ftp\n"
        "http://,nohost\n"
        "http://ok.test/a.jpg,fine\n"
        "http://ok.test/b.jpg,too,many\n"
        "http://ok.test:99999/c.jpg,badport\n"
        "/etc/passwd,outside\n"
        "missing.jpg,nofile\n"
    )
    rows = _rows(m)
    reasons = [r.invalid for r in rows]
    assert reasons[0] == "empty url"
    assert "unsupported scheme 'ftp'" in reasons[1]
    assert "no host" in reasons[2]
    assert reasons[3] is None
    assert "3 fields, header has 2" in reasons[4]
    assert "malformed url" in reasons[5]
    assert "outside --local-root" in reasons[6]
    assert reasons[7] == "no such local file"
    assert [r.line for r in rows] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert [r.key for r in rows] == [str(i) for i in range(8)]


def test_local_paths_resolve_under_root_and_symlinks_cannot_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (root / "img" / "link.jpg").symlink_to(outside)
    m = root / "m.txt"
    m.write_text(f"img/a.jpg\nfile://{root}/img/a.jpg\n../secret.jpg\nimg/link.jpg\nfile://evil.host/etc/passwd\n")
    rows = _rows(m)
    assert rows[0].source == str(root / "img" / "a.jpg")
    assert rows[1].source == str(root / "img" / "a.jpg")
    assert "outside --local-root" in rows[2].invalid
    assert "outside --local-root" in rows[3].invalid
    assert "remote host" in rows[4].invalid
    # An explicit --local-root widens (or narrows) what may be read.
    rows = _rows(m, local_root=tmp_path)
    assert rows[2].invalid is None and rows[2].source == str(outside)


def test_tsv_text_jsonl_and_gzip(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("link\tname\nhttp://a.test/1.png\tone\n")
    rows = _rows(tmp_path / "m.tsv", url_column="link")
    assert rows[0].url == "http://a.test/1.png" and rows[0].extra == (("name", "one"),)

    (tmp_path / "m.txt").write_text("# comment\n\nhttp://a.test/1.png\n  http://a.test/2.png  \n")
    assert [r.url for r in _rows(tmp_path / "m.txt")] == ["http://a.test/1.png", "http://a.test/2.png"]

    lines = [json.dumps({"url": "http://a.test/1.png", "key": 7, "w": 3}), "{not json", "[1]", json.dumps({"url": 5})]
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    rows = _rows(tmp_path / "m.jsonl.gz")
    assert rows[0].key == "7" and rows[0].extra == (("w", "3"),)
    assert "malformed JSON" in rows[1].invalid
    assert "not a JSON object" in rows[2].invalid
    assert "not a string" in rows[3].invalid


def test_directory_means_every_image_under_it_in_stable_order(tmp_path: Path) -> None:
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    rows = _rows(tmp_path)
    assert [r.key for r in rows] == ["a.PNG", "b.jpg", "sub/c.webp"]
    assert rows[2].source == str(tmp_path / "sub" / "c.webp")


def test_whole_manifest_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        open_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ManifestError, match="cannot tell the format"):
        open_manifest(tmp_path / "m.xlsx")
    (tmp_path / "m.csv").write_text("link,caption\nhttp://a.test/x.jpg,c\n")
    with pytest.raises(ManifestError, match="no 'url' column.*--url-column"):
        _rows(tmp_path / "m.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        _rows(tmp_path / "e.csv")


def test_invalid_utf8_is_an_invalid_row_not_a_crash(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes(b"url\nhttp://a.test/\xff.jpg\nhttp://a.test/ok.jpg\n")
    rows = _rows(m)
    assert rows[0].invalid == "url is not valid UTF-8"
    assert rows[1].invalid is None


def test_streaming_memory_does_not_grow_with_manifest_size(tmp_path: Path) -> None:
    def peak(n: int) -> int:
        m = tmp_path / f"m{n}.csv"
        with m.open("w") as f:
            f.write("url,caption\n")
            for i in range(n):
                f.write(f"http://host{i % 50}.test/{i}.jpg,caption number {i}\n")
        tracemalloc.start()
        count = sum(1 for _ in read_rows(open_manifest(m)))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == n
        return top

    small, large = peak(2_000), peak(30_000)
    assert large < small * 3 + 200_000  # 15x the rows, not 15x the memory


def test_default_out_and_identity(tmp_path: Path) -> None:
    m = tmp_path / "urls.csv.gz"
    with gzip.open(m, "wt") as f:
        f.write("url\nhttp://a.test/1.jpg\n")
    spec = open_manifest(m)
    assert default_out(spec).name == "urls.pipeline"
    first = identity(spec)
    assert identity(spec) == first
    with gzip.open(m, "wt") as f:
        f.write("url\nhttp://a.test/2.jpg\n")
    assert identity(spec) != first


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_resolve_source_never_raises_and_only_accepts_http_or_files_under_root(text: str) -> None:
    root = Path("/nonexistent-root")
    source, problem = resolve_source(text, root)
    assert (source == "") == (problem is not None)
    if problem is None:
        assert source.lower().startswith(("http://", "https://"))


def test_count_rows_estimates_every_format(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("url\n" + "".join(f"http://a.test/{i}\n" for i in range(7)))
    (tmp_path / "m.txt").write_text("http://a.test/1\nhttp://a.test/2")  # no final line break
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"url": f"http://a.test/{i}"}) + "\n" for i in range(5))
    from pipeline.manifest.read import count_rows

    assert count_rows(open_manifest(tmp_path / "m.csv")) == 7
    assert count_rows(open_manifest(tmp_path / "m.txt")) == 2
    assert count_rows(open_manifest(tmp_path / "m.jsonl.gz")) == 5
