"""JSONL manifests: one object per line, the URL and key taken from it, every other field an extra."""

from __future__ import annotations

import json
from collections.abc import Iterator

from pipeline.manifest.lines import lines, open_text
from pipeline.manifest.rows import clean, make_row
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow


def read_jsonl(spec: ManifestSpec) -> Iterator[ManifestRow]:
    with open_text(spec) as f:
        row = 0
        for line_no, line in enumerate(lines(f, spec), start=1):
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
            row, line_no, str(row), "", "", (), f"'{clean(spec.url_column)}' is not a string ({kind})"
        )
    extra = {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    return make_row(spec, row, line_no, url, None if key is None else str(key), extra)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
