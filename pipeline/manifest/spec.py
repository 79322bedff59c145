"""Where a manifest is and what kind it is (``ManifestSpec``), and the OUT folder named after it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ManifestError

_SUFFIX_KIND = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
    ".urls": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


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
