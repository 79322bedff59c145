"""Property tests (issue 11): whatever the bytes, every manifest format yields rows or raises a
typed manifest error, and every row it yields can be stored in the catalog.

Cells are arbitrary bytes and long strings (past the 255 bytes of a file name), in every
format, gzipped or not, and gzip streams cut anywhere.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError, ManifestTruncated
from pipeline.manifest.read import extra_columns, read_rows
from pipeline.manifest.spec import open_manifest

TEXT_KINDS = ["csv", "tsv", "txt", "jsonl"]
KINDS = TEXT_KINDS + ["parquet"] + [f"{k}.gz" for k in TEXT_KINDS]
FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

long_text = st.text(min_size=256, max_size=3000)
cells = st.one_of(
    st.text(max_size=40),
    long_text,
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape")),  # any bytes, as read
    st.sampled_from(["http://x.test/a.jpg", "img/a.jpg", "file:///etc/passwd", "http://[::1/x", "a\x00b"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | long_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _check(path: Path, root: Path) -> None:
    """The property: rows, or a ManifestError/ManifestTruncated; never anything else."""
    try:
        spec = open_manifest(path, local_root=root)
        extra_columns(spec)
        rows = list(read_rows(spec))
    except (ManifestError, ManifestTruncated):
        return
    assert [r.row for r in rows] == list(range(len(rows)))
    for r in rows:
        assert (r.invalid is None) == bool(r.source), r
        for text in (r.url, r.key, r.source, r.invalid or "", *(t for pair in r.extra for t in pair)):
            text.encode("utf-8")  # strict: what SQLite needs
        if r.invalid is None and not r.source.lower().startswith(("http://", "https://")):
            assert Path(r.source).is_relative_to(root) and Path(r.source).is_file()


def _write(folder: Path, kind: str, body: bytes, cut: int | None = None) -> Path:
    path = folder / f"m.{kind}"
    if kind.endswith(".gz"):
        body = gzip.compress(body, mtime=0)
        if cut is not None:
            body = body[: cut % (len(body) + 1)]
    path.write_bytes(body)
    return path


def _folder() -> tempfile.TemporaryDirectory[str]:
    folder = tempfile.TemporaryDirectory()
    (Path(folder.name) / "img").mkdir()
    (Path(folder.name) / "img" / "a.jpg").write_bytes(b"not checked here")
    return folder


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(
    header=st.sampled_from([b"", b"url\n", b"key,url,caption\n", b"key\turl\tcaption\n"]),
    body=st.binary(max_size=3000),
    cut=st.none() | st.integers(min_value=0),
)
def test_arbitrary_bytes_yield_rows_or_a_manifest_error(
    kind: str, header: bytes, body: bytes, cut: int | None
) -> None:
    with _folder() as name:
        _check(_write(Path(name), kind, header + body, cut), Path(name))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "parquet"])
@FUZZ
@given(rows=st.lists(st.tuples(cells, cells, cells), max_size=8), cut=st.none() | st.integers(min_value=0))
def test_arbitrary_cells_in_well_formed_files(
    kind: str, rows: list[tuple[str, str, str]], cut: int | None
) -> None:
    """Cells of any bytes and length, written as the format says (quoted CSV, JSON strings)."""
    base = kind.removesuffix(".gz")
    if base in ("csv", "tsv"):
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, delimiter="," if base == "csv" else "\t")
        writer.writerow(["key", "url", "caption"])
        writer.writerows(rows)
        body = buffer.getvalue().encode("utf-8", "surrogateescape")
    elif base == "txt":
        body = b"\n".join(url.encode("utf-8", "surrogateescape") for _, url, _ in rows)
    else:
        body = b"\n".join(
            json.dumps({"key": k, "url": u, "caption": c}, ensure_ascii=False).encode(
                "utf-8", "surrogateescape"
            )
            for k, u, c in rows
        )
    with _folder() as name:
        _check(_write(Path(name), kind, body, cut), Path(name))


@FUZZ
@given(st.lists(st.tuples(json_values, json_values, json_values), max_size=8))
def test_arbitrary_json_values_in_jsonl(rows: list[tuple[object, object, object]]) -> None:
    body = b"\n".join(json.dumps({"key": k, "url": u, "n": n}).encode() for k, u, n in rows)
    with _folder() as name:
        _check(_write(Path(name), "jsonl", body), Path(name))


url_columns = st.one_of(
    st.tuples(st.just(pa.string()), st.lists(st.none() | st.text(max_size=40) | long_text, max_size=8)),
    st.tuples(st.just(pa.large_string()), st.lists(st.none() | long_text, max_size=8)),
    st.tuples(st.just(pa.binary()), st.lists(st.none() | st.binary(max_size=300), max_size=8)),
    st.tuples(st.just(pa.int64()), st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=8)),
    st.tuples(st.just(pa.float64()), st.lists(st.none() | st.floats(), max_size=8)),
    st.tuples(st.just(pa.bool_()), st.lists(st.none() | st.booleans(), max_size=8)),
)


@FUZZ
@given(url=url_columns, extra=st.lists(st.none() | st.binary(max_size=50), min_size=8, max_size=8))
def test_parquet_url_columns_of_any_type(
    url: tuple[pa.DataType, list[object]], extra: list[bytes | None]
) -> None:
    kind, values = url
    table = pa.table({"url": pa.array(values, kind), "blob": pa.array(extra[: len(values)], pa.binary())})
    with _folder() as name:
        path = Path(name) / "m.parquet"
        pq.write_table(table, path)
        _check(path, Path(name))
