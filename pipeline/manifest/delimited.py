"""CSV and TSV manifests: a header naming the URL column, an optional key column, every other column an extra."""

from __future__ import annotations

import csv
from collections.abc import Iterator

from pipeline.errors import ManifestError
from pipeline.manifest.lines import lines, open_text
from pipeline.manifest.rows import make_row
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow

# Long captions are normal in image-text manifests; the csv module's 128 KiB default is not.
csv.field_size_limit(16 * 1024 * 1024)


def read_delimited(spec: ManifestSpec) -> Iterator[ManifestRow]:
    delimiter = "," if spec.kind == "csv" else "\t"
    with open_text(spec) as f:
        # strict: a quote left open at the end of the file is an error ("unexpected end of
        # data": the row is invalid), not a field that silently swallowed the rest of the file.
        reader = csv.reader(lines(f, spec), delimiter=delimiter, strict=True)
        header = read_header(reader, spec)
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


def read_header(reader: Iterator[list[str]], spec: ManifestSpec) -> list[str]:
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
