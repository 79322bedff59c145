"""One row made usable or explained: its URL resolved (http(s), or a local file under --local-root), its text storable."""

from __future__ import annotations

import re
from itertools import chain
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow

# A lone surrogate: a byte that was not UTF-8 (read with surrogateescape), or a JSON "\ud800"
# escape. SQLite cannot store one, so every text of a row is cleaned of them (issue 11).
_SURROGATE = re.compile("[\ud800-\udfff]")


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
        source, problem = "", f"column '{clean(bad)}' is not valid UTF-8"
    extras = tuple((clean(name), clean(value)) for name, value in extras)
    return ManifestRow(row, line, clean(key), clean(text), source, extras, problem)


def clean(text: str) -> str:
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
