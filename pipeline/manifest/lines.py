"""A text manifest (± gzip) as a stream of lines, cut short as ``ManifestTruncated``; ``.txt``: one URL per line."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

from pipeline.errors import ManifestError, ManifestTruncated
from pipeline.manifest.rows import make_row
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow


def open_text(spec: ManifestSpec) -> IO[str]:
    # surrogateescape keeps a bad byte visible to resolve_source instead of failing the file.
    if spec.gzipped:
        return gzip.open(spec.path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return spec.path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")


def lines(f: Iterable[str], spec: ManifestSpec) -> Iterator[str]:
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


def read_text(spec: ManifestSpec) -> Iterator[ManifestRow]:
    with open_text(spec) as f:
        row = 0
        for line_no, line in enumerate(lines(f, spec), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            yield make_row(spec, row, line_no, text, None, {})
            row += 1
