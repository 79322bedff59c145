"""Thumbnail names that a person can find (issue 12): ``--layout content|mirror|key``.

``content`` (``thumbs/256-q85/ab/<sha256>.jpg``) is the store's own name (store/base.py).
``mirror`` names a thumbnail after its source: ``photos/2019/beach.jpg`` (relative to the
folder or ``--local-root``) → ``thumbs/256-q85/2019/beach.jpg``; a URL → its host and path,
``https://example.com/a/b.jpg?w=2`` → ``thumbs/256-q85/example.com/a/b%3Fw=2.jpg``. ``key``
names it after the manifest's key column (``/`` in a key makes folders). The variant folder
(size, quality, …) stays in front, so two variants never share a name.

Names are chosen in the parent, in manifest order, before rows are cut into shards
(``name_rows``), so they are the same on every rerun, on every static partition and under
every executor, and a worker only writes where its row says. Every row gets a name: text a
filesystem cannot take is escaped, never refused (``safe_stem``):

- ``NUL``, control characters, ``/ \\ < > : " | ? *``, bytes that were not UTF-8 and a
  trailing dot or space become ``%XX`` (the UTF-8 bytes, upper-case hex); ``.`` and ``..``
  are ``%2E`` and ``%2E%2E``; a Windows device name (``con``, ``aux.tar``, ``com1``) gets its
  first letter escaped; ``%`` itself is kept, for readable names (so escaping is not
  one-to-one, and two rows may meet: see below);
- a folder named like a thumbnail (``x.jpg/``) gets its last dot escaped (``x%2Ejpg/``), so a
  folder never takes a file's name;
- a component longer than 200 bytes (255 for folders) keeps its first bytes and ends with
  ``~`` and 16 hex digits of its SHA-256; a name longer than 1,024 bytes keeps its file name
  under ``~deep/<16 hex digits of its folders>/``;
- a trailing image extension (``.jpg``, ``.PNG``, …) is dropped: the thumbnail's own is added.

Two rows whose names are equal, ignoring case and Unicode normalisation (as on macOS and
Windows filesystems), both keep a file: the first row in manifest order gets the name, the
next ones ``name~2``, ``name~3``, … (the catalog's ``thumbnails`` says which row has which).
The parent remembers one 8-byte hash per named row for that (~100 bytes of RAM per row in a
Python set: 10 M rows, ~1 GB; the ``content`` layout needs none).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import replace
from urllib.parse import unquote, urlsplit

from pipeline.config import LAYOUTS
from pipeline.models import ManifestRow

__all__ = ["LAYOUTS", "Namer", "default_layout", "name_rows", "named_relpath", "safe_stem"]

# Extensions a source or key may end with that the thumbnail's own replaces; also what a
# folder may not end with (it would take the name of a thumbnail).
IMAGE_EXTS = frozenset(
    ("jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "bmp", "dib", "tif", "tiff", "avif", "heic", "heif",
     "jxl", "jp2", "mpo", "ico")
)  # fmt: skip
LAST_MAX = 200  # bytes of a file name's stem: ~N (collisions) and .ext stay under 255
DIR_MAX = 255
STEM_MAX = 1024  # bytes of the whole name below the variant folder
_HASH = 16  # hex digits of SHA-256 that replace a too-long tail
# Escaped wherever they are: separators, what Windows refuses, C0/C1 controls, surrogates.
_UNSAFE = re.compile(r'[/\\<>:"|?*\x00-\x1f\x7f-\x9f\ud800-\udfff]')
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"{p}{d}" for p in ("com", "lpt") for d in "0123456789\u00b9\u00b2\u00b3"]
)
# The content layout's own names (``ab/<sha256>``): a named file must never take one.
_CONTENT_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}", re.IGNORECASE)


def default_layout(manifest_kind: str) -> str:
    """``mirror`` for a folder (people look for their photos by name), ``content`` for a
    manifest file (URLs name servers, not pictures; keys are often row numbers)."""
    return "mirror" if manifest_kind == "dir" else "content"


# --- one name ------------------------------------------------------------------------------


def safe_stem(parts: Iterable[str]) -> str:
    """Components of a wanted name (any text) → a relative POSIX name without extension that
    every common filesystem takes and that cannot leave the folder it is joined to."""
    comps = [p for p in parts if p]
    if not comps:
        comps = ["_"]
    comps[-1] = _drop_image_ext(comps[-1])
    out = [_component(c, last=i == len(comps) - 1) for i, c in enumerate(comps)]
    stem = "/".join(out)
    if _CONTENT_NAME.fullmatch(stem):
        stem = f"{out[0]}/{_pct(out[1][0])}{out[1][1:]}"
    if len(stem.encode()) > STEM_MAX:
        folders = "/".join(out[:-1]).encode()
        stem = f"~deep/{hashlib.sha256(folders).hexdigest()[:_HASH]}/{out[-1]}"
    return stem


def mirror_parts(row: ManifestRow, root: str, base: str) -> list[str]:
    """What ``mirror`` names a row after: its path under ``root`` as listed (a relative path
    is relative to ``base``, the manifest's folder; symlinks not followed), or, for a URL,
    host and path (the query kept, the scheme and any user:password dropped)."""
    if row.source.startswith("/"):
        text = row.url
        if text.lower().startswith("file:"):
            text = unquote(urlsplit(text).path)
        lexical = os.path.normpath(os.path.join(base, text))
        if not lexical.startswith(root.rstrip("/") + "/"):
            lexical = row.source  # resolved, and checked to lie under the root
        return os.path.relpath(lexical, root).split("/")
    parts = urlsplit(row.url)
    host = (parts.hostname or "_").lower()
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    segments = [unquote(s) for s in parts.path.split("/")[1:]] or [""]
    if not segments[-1]:
        segments[-1] = "index"
    if parts.query:
        segments[-1] = f"{_drop_image_ext(segments[-1])}?{parts.query}"
    return [host, *segments]


def key_parts(row: ManifestRow) -> list[str]:
    return row.key.split("/")


# --- every name of a run ------------------------------------------------------------------


class Namer:
    """Gives each stem a name no earlier one has (ignoring case and normalisation)."""

    __slots__ = ("_next", "_taken")

    def __init__(self) -> None:
        self._taken: set[int] = set()
        self._next: dict[int, int] = {}  # for a name seen before: the next suffix to try

    def assign(self, stem: str) -> str:
        key = _fold(stem)
        if key not in self._taken:
            self._taken.add(key)
            return stem
        n = self._next.get(key, 2)
        while True:
            candidate = f"{stem}~{n}"
            n += 1
            folded = _fold(candidate)
            if folded not in self._taken:
                self._taken.add(folded)
                self._next[key] = n
                return candidate


def name_rows(rows: Iterable[ManifestRow], layout: str, *, root: str, base: str) -> Iterator[ManifestRow]:
    """``rows`` (every row of the manifest, in order) with ``name`` set under ``layout``;
    rows unchanged under ``content`` and for invalid rows (nothing is written for them)."""
    if layout == "content":
        yield from rows
        return
    namer = Namer()
    for row in rows:
        if row.invalid is not None:
            yield row
            continue
        wanted = mirror_parts(row, root, base) if layout == "mirror" else key_parts(row)
        yield replace(row, name=namer.assign(safe_stem(wanted)))


def named_relpath(content_rel: str, stem: str) -> str:
    """The store's content name of a thumbnail (``thumbs/<variant>/ab/<sha>.<ext>``) with
    ``<ab>/<sha>`` replaced by ``stem``: same variant folder, same extension."""
    folder = content_rel.rsplit("/", 2)[0]
    ext = content_rel.rsplit(".", 1)[1]
    return f"{folder}/{stem}.{ext}"


# --- internals ------------------------------------------------------------------------------


def _fold(stem: str) -> int:
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", stem).casefold())
    return int.from_bytes(hashlib.blake2b(folded.encode(), digest_size=8).digest(), "big")


def _drop_image_ext(name: str) -> str:
    head, dot, ext = name.rpartition(".")
    return head if dot and head and ext.lower() in IMAGE_EXTS else name


def _pct(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"%{code - 0xDC00:02X}"
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def _pct_match(match: re.Match[str]) -> str:
    return _pct(match.group())


def _component(text: str, *, last: bool) -> str:
    out = _UNSAFE.sub(_pct_match, text)
    body = out.rstrip(". ")
    out = body + "".join(_pct(ch) for ch in out[len(body) :])  # Windows drops them: "a." is "a"
    if out.split(".")[0].rstrip(" ").casefold() in _RESERVED:
        out = _pct(out[0]) + out[1:]
    if not last:
        head, dot, ext = out.rpartition(".")
        if dot and ext.lower() in IMAGE_EXTS:
            out = f"{head}%2E{ext}"
    limit = LAST_MAX if last else DIR_MAX
    if len(out.encode()) > limit:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH]
        out = f"{_cut(out, limit - _HASH - 1)}~{digest}"
    return out


def _cut(text: str, budget: int) -> str:
    """The longest prefix of ``text`` within ``budget`` UTF-8 bytes that does not split a
    ``%XX`` escape."""
    size = 0
    end = 0
    for i, ch in enumerate(text):
        size += len(ch.encode())
        if size > budget:
            break
        end = i + 1
    cut = text[:end]
    tail = cut[-2:]
    if "%" in tail:
        cut = cut[: len(cut) - len(tail) + tail.index("%")]
    return cut
