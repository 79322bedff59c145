"""Stage 1: read the manifest as a stream of ``ManifestRow``s.

Formats, chosen by file name: ``.csv`` and ``.tsv`` (header required; the URL column is
``url`` unless told otherwise, an optional ``key`` column, every other column is kept as
an extra), ``.txt`` (one URL per line, ``#`` comments), ``.jsonl``/``.ndjson`` (one object
per line), ``.parquet`` (needs pyarrow), each optionally ``.gz``. A directory stands for
every image file under it.

Rows are never held all at once: memory stays flat however long the manifest is. A row
that cannot be used is still yielded, with ``invalid`` set, so that it is recorded with its
line number and the run goes on.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from pipeline.errors import ManifestError, ManifestTruncated
from pipeline.models import ManifestRow

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
_SUFFIX_KIND = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
    ".urls": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
# Long captions are normal in image-text manifests; the csv module's 128 KiB default is not.
csv.field_size_limit(16 * 1024 * 1024)
# A lone surrogate: a byte that was not UTF-8 (read with surrogateescape), or a JSON "\ud800"
# escape. SQLite cannot store one, so every text of a row is cleaned of them (issue 11).
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ManifestSpec:
    """Where a manifest is and how to read it."""

    path: Path
    kind: str
    gzipped: bool = False
    url_column: str = "url"
    key_column: str = "key"
    local_root: Path | None = None  # None: the manifest's own folder

    @property
    def base(self) -> Path:
        """What relative local paths are relative to: the manifest's folder."""
        return self.path if self.kind == "dir" else self.path.parent

    @property
    def root(self) -> Path:
        """What local paths must lie under: --local-root, else the manifest's folder."""
        if self.kind == "dir":
            return self.path  # a directory manifest is its own root
        return self.local_root if self.local_root is not None else self.base


def open_manifest(
    path: str | os.PathLike[str],
    *,
    url_column: str = "url",
    key_column: str = "key",
    local_root: str | os.PathLike[str] | None = None,
) -> ManifestSpec:
    """Check that ``path`` is a readable manifest and work out its kind."""
    p = Path(path).expanduser().resolve()
    root = Path(local_root).expanduser().resolve() if local_root is not None else None
    if p.is_dir():
        return ManifestSpec(p, "dir", False, url_column, key_column, root)
    if not p.is_file():
        raise ManifestError(f"manifest not found: {path}")
    suffixes = [s.lower() for s in p.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    kind = _SUFFIX_KIND.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise ManifestError(
            f"cannot tell the format of {p.name}: name it .csv, .tsv, .txt, .jsonl or .parquet "
            "(optionally .gz), or pass a directory of images"
        )
    return ManifestSpec(p, kind, gzipped, url_column, key_column, root)


def default_out(spec: ManifestSpec) -> Path:
    """``manifest.csv.gz`` → ``./manifest.pipeline``."""
    name = spec.path.name
    for suffix in reversed(spec.path.suffixes):
        if name.lower().endswith(suffix.lower()):
            name = name[: -len(suffix)]
    return Path.cwd() / f"{name or 'manifest'}.pipeline"


def identity(spec: ManifestSpec) -> dict[str, object]:
    """A cheap identity for the resume check: size plus hashes of the head and tail."""
    if spec.kind == "dir":
        digest = hashlib.sha256()
        count = 0
        for rel, full in _walk_images(spec.path):
            # surrogateescape: a file name that is not UTF-8 is a row to report, not a crash
            digest.update(f"{rel}\0{full.stat().st_size}\n".encode("utf-8", "surrogateescape"))
            count += 1
        return {"path": str(spec.path), "kind": "dir", "files": count, "sha256": digest.hexdigest()}
    size = spec.path.stat().st_size
    digest = hashlib.sha256()
    with spec.path.open("rb") as f:
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
        digest.update(f.read(1 << 20))
    return {"path": str(spec.path), "kind": spec.kind, "size": size, "sha256": digest.hexdigest()}


def read_rows(spec: ManifestSpec) -> Iterator[ManifestRow]:
    """Yield every data row in order; row numbers count from 0."""
    readers = {
        "csv": _read_delimited,
        "tsv": _read_delimited,
        "txt": _read_text,
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "dir": _read_dir,
    }
    yield from readers[spec.kind](spec)


def extra_columns(spec: ManifestSpec) -> tuple[str, ...]:
    """Extra column names known from a header (CSV/TSV/Parquet); JSONL extras vary by row.

    Reading the header also checks it, so a manifest without its URL column fails before
    any worker starts.
    """
    if spec.kind in ("csv", "tsv"):
        with _open_text(spec) as f:
            header = _read_header(
                csv.reader(_lines(f, spec), delimiter="," if spec.kind == "csv" else "\t"), spec
            )
        return tuple(h for h in header if h not in (spec.url_column, spec.key_column))
    if spec.kind == "parquet":
        names = _parquet_file(spec).schema_arrow.names
        return tuple(n for n in names if n not in (spec.url_column, spec.key_column))
    return ()


def count_rows(spec: ManifestSpec) -> int:
    """About how many data rows there are, fast: for a progress bar, not for bookkeeping.

    Text formats count line breaks (a quoted multi-line CSV field counts more than once);
    Parquet and folders are exact.
    """
    if spec.kind == "dir":
        return sum(1 for _ in _walk_images(spec.path))
    if spec.kind == "parquet":
        return int(_parquet_file(spec).metadata.num_rows)
    opener = gzip.open if spec.gzipped else open
    lines = 0
    last = b"\n"
    with opener(spec.path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"  # a last line without a line break
    return max(0, lines - (1 if spec.kind in ("csv", "tsv") else 0))


# --- one row -------------------------------------------------------------------------------


def make_row(
    spec: ManifestSpec, row: int, line: int, url: str | None, key: str | None, extra: dict[str, str]
) -> ManifestRow:
    """Validate one URL and decide where its bytes come from.

    Every text of the row is made storable: a row with bytes that are not UTF-8 anywhere is
    ``invalid`` (naming the column), its bad bytes kept as U+FFFD for the catalog.
    """
    text = (url or "").strip()
    key = (key or "").strip() or str(row)
    extras = tuple(extra.items())
    source, problem = resolve_source(text, spec.root, spec.base)
    if not _SURROGATE.search("".join((text, key, *chain.from_iterable(extras)))):  # one scan: the usual case
        return ManifestRow(row, line, key, text, source, extras, problem)
    if problem is None:
        columns = [(spec.key_column, key), *extras]
        bad = next(name for name, value in columns if _SURROGATE.search(name) or _SURROGATE.search(value))
        source, problem = "", f"column '{_clean(bad)}' is not valid UTF-8"
    extras = tuple((_clean(name), _clean(value)) for name, value in extras)
    return ManifestRow(row, line, _clean(key), _clean(text), source, extras, problem)


def _clean(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def resolve_source(url: str, root: Path, base: Path | None = None) -> tuple[str, str | None]:
    """Return (source, None) for a usable URL, or ("", reason) for an unusable one.

    Relative local paths are taken relative to ``base`` and must end up under ``root``.
    """
    if not url:
        return "", "empty url"
    if _SURROGATE.search(url):
        return "", "url is not valid UTF-8"
    if any(c in url for c in "\r\n\t\x00"):
        return "", "url contains control characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return "", f"malformed url: {exc}"
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            return "", "malformed url: no host"
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            return "", f"malformed url: {exc}"
        return url, None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return "", f"file url with a remote host: {parts.netloc}"
        return _local_source(Path(unquote(parts.path)), root, base or root)
    if scheme and len(scheme) > 1:  # one letter would be a Windows drive
        return "", f"unsupported scheme '{scheme}' (only http, https, or local files under --local-root)"
    return _local_source(Path(url), root, base or root)


def _local_source(path: Path, root: Path, base: Path) -> tuple[str, str | None]:
    # Resolving follows symlinks, so a link inside the root pointing outside is refused too.
    # This runs in the parent's feed loop: a caption pasted into the url column (a "file
    # name" over 255 bytes: ENAMETOOLONG) or a symlink loop must make the row invalid, not
    # end the run (issue 11).
    try:
        full = (base / path).resolve()
        if not full.is_relative_to(root):
            return "", f"local path outside --local-root ({root})"
        if not full.is_file():
            return "", "no such local file"
    except OSError as exc:
        return "", f"not a usable local path: {exc.strerror or exc}"
    except RuntimeError:  # pathlib's "Symlink loop from ..." (Python < 3.13)
        return "", "not a usable local path: symlink loop"
    return str(full), None


# --- readers -------------------------------------------------------------------------------


def _open_text(spec: ManifestSpec) -> IO[str]:
    # surrogateescape keeps a bad byte visible to resolve_source instead of failing the file.
    if spec.gzipped:
        return gzip.open(spec.path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return spec.path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")


def _lines(f: Iterable[str], spec: ManifestSpec) -> Iterator[str]:
    """``f``'s lines; a stream that breaks off (a cut or damaged .gz, a read error) raises
    ``ManifestTruncated`` after the last whole line, so the rows before it still run. A file
    that is not gzip at all is a ``ManifestError`` (nothing was read)."""
    line = 0
    try:
        for text in f:
            yield text
            line += 1
    except EOFError as exc:  # gzip: "Compressed file ended before the end-of-stream marker"
        raise ManifestTruncated(
            f"manifest {spec.path.name} is truncated after line {line} (compressed stream ended early)", line
        ) from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        if line == 0:
            raise ManifestError(f"cannot read {spec.path.name}: {exc}") from exc
        raise ManifestTruncated(
            f"manifest {spec.path.name} cannot be read after line {line} ({exc})", line
        ) from exc


def _read_delimited(spec: ManifestSpec) -> Iterator[ManifestRow]:
    delimiter = "," if spec.kind == "csv" else "\t"
    with _open_text(spec) as f:
        # strict: a quote left open at the end of the file is an error ("unexpected end of
        # data": the row is invalid), not a field that silently swallowed the rest of the file.
        reader = csv.reader(_lines(f, spec), delimiter=delimiter, strict=True)
        header = _read_header(reader, spec)
        url_at = header.index(spec.url_column)
        key_at = header.index(spec.key_column) if spec.key_column in header else None
        extra_at = [(i, h) for i, h in enumerate(header) if i not in (url_at, key_at)]
        row = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield ManifestRow(row, reader.line_num, str(row), "", "", (), f"malformed row: {exc}")
                row += 1
                continue
            if not fields or all(not x.strip() for x in fields):
                continue  # blank lines separate nothing; they are not rows
            if len(fields) != len(header):
                reason = f"malformed row: {len(fields)} fields, header has {len(header)}"
                yield ManifestRow(row, reader.line_num, str(row), "", "", (), reason)
            else:
                extra = {h: fields[i] for i, h in extra_at}
                key = fields[key_at] if key_at is not None else None
                yield make_row(spec, row, reader.line_num, fields[url_at], key, extra)
            row += 1


def _read_header(reader: Iterator[list[str]], spec: ManifestSpec) -> list[str]:
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{spec.path.name} is empty: a header line is required") from None
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        raise ManifestError(f"cannot read the header of {spec.path.name}: {exc}") from exc
    if spec.url_column not in header:
        raise ManifestError(
            f"{spec.path.name} has no '{spec.url_column}' column (columns: {', '.join(header)}); "
            "name it with --url-column"
        )
    return header


def _read_text(spec: ManifestSpec) -> Iterator[ManifestRow]:
    with _open_text(spec) as f:
        row = 0
        for line_no, line in enumerate(_lines(f, spec), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            yield make_row(spec, row, line_no, text, None, {})
            row += 1


def _read_jsonl(spec: ManifestSpec) -> Iterator[ManifestRow]:
    with _open_text(spec) as f:
        row = 0
        for line_no, line in enumerate(_lines(f, spec), start=1):
            if not line.strip():
                continue
            yield _jsonl_row(spec, row, line_no, line)
            row += 1


def _jsonl_row(spec: ManifestSpec, row: int, line_no: int, line: str) -> ManifestRow:
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, and "Exceeds the limit (4300 digits)" for a huge int
        return ManifestRow(row, line_no, str(row), "", "", (), f"malformed JSON: {_short(str(exc))}")
    except RecursionError:  # [[[[… nested deeper than the interpreter's stack
        return ManifestRow(row, line_no, str(row), "", "", (), "malformed JSON: nested too deeply")
    if not isinstance(obj, dict):
        return ManifestRow(row, line_no, str(row), "", "", (), "malformed row: not a JSON object")
    url = obj.pop(spec.url_column, None)
    key = obj.pop(spec.key_column, None)
    if url is not None and not isinstance(url, str):
        kind = type(url).__name__
        return ManifestRow(
            row, line_no, str(row), "", "", (), f"'{_clean(spec.url_column)}' is not a string ({kind})"
        )
    extra = {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    return make_row(spec, row, line_no, url, None if key is None else str(key), extra)


def _parquet_file(spec: ManifestSpec):  # type: ignore[no-untyped-def]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError("Parquet manifests need pyarrow: pip install 'pipeline[parquet]'") from None
    if spec.gzipped:
        raise ManifestError("a Parquet file is compressed inside; do not gzip it")
    try:
        return pq.ParquetFile(spec.path)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ManifestError(f"cannot read {spec.path.name} as Parquet: {exc}") from exc


def _read_parquet(spec: ManifestSpec) -> Iterator[ManifestRow]:
    pf = _parquet_file(spec)
    if spec.url_column not in pf.schema_arrow.names:
        raise ManifestError(f"{spec.path.name} has no '{spec.url_column}' column")
    row = 0
    batches = pf.iter_batches(batch_size=4096)  # streams: one batch in memory at a time
    while True:
        try:
            batch = next(batches, None)
            records = batch.to_pylist() if batch is not None else None
        except (OSError, ValueError, OverflowError) as exc:  # a damaged page; a date out of range
            raise ManifestTruncated(
                f"manifest {spec.path.name} cannot be read after row {row} ({exc})", row
            ) from exc
        if records is None:
            return
        for record in records:
            url = record.pop(spec.url_column, None)
            key = record.pop(spec.key_column, None)
            extra = {k: "" if v is None else _parquet_text(v) for k, v in record.items()}
            if url is not None and not isinstance(url, (str, bytes)):
                reason = f"'{spec.url_column}' is not a string ({type(url).__name__})"
                yield ManifestRow(row, row + 1, str(row), "", "", (), reason)
            else:
                text = None if url is None else _parquet_text(url)
                yield make_row(spec, row, row + 1, text, None if key is None else _parquet_text(key), extra)
            row += 1


def _parquet_text(value: object) -> str:
    """A cell as text: a binary cell holding UTF-8 is that text (bytes that are not UTF-8 come
    out as surrogates, which ``make_row`` reports); anything else its ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return value if isinstance(value, str) else str(value)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _walk_images(top: Path) -> Iterator[tuple[str, Path]]:
    """Image files under ``top`` in a stable order (sorted at every level)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                full = Path(dirpath, name)
                yield full.relative_to(top).as_posix(), full


def _read_dir(spec: ManifestSpec) -> Iterator[ManifestRow]:
    for row, (rel, _full) in enumerate(_walk_images(spec.path)):
        yield make_row(spec, row, row + 1, rel, rel, {})
