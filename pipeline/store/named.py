"""A source's thumbnails under its rows' names (``--layout mirror|key``), written through the run's store.

Under ``--layout mirror`` or ``key`` (issue 12, ``pipeline/layout.py``) a thumbnail is
named after its row instead of its content, ``thumbs/<size>-<variant>/<name>.<ext>``:
``NamedStore`` turns the content name into the row's (same variant folder, same extension),
and the name was made safe by ``layout.safe_stem`` (no ``..``, no absolute path, nothing the
store refuses). A named file is always written (an earlier run's file under that name may
hold other bytes); rows that share a source share one encode: the file is hard-linked
(copied where links fail) to every further name (``atomic_paths``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pipeline.layout import named_relpath
from pipeline.store.base import ContentStore


class NamedStore:
    """The store as one source's image sees it under ``--layout mirror|key``: a thumbnail
    asked for under its content name goes to the names of the source's rows instead
    (``names``: one per row, in row order; the first is the one reported). Everything else
    (originals, uploads) is the store's. ``paths`` maps each reported name to all of them.

    ``image/encode.py`` keeps calling ``thumb_relpath``, ``exists`` and ``atomic_path`` as for the
    content layout; only the name changes."""

    __slots__ = ("_store", "names", "paths")

    def __init__(self, store: ContentStore, names: list[str]) -> None:
        self._store = store
        self.names = names
        self.paths: dict[str, list[str]] = {}

    def thumb_relpath(self, *args: object, **kwargs: object) -> str:
        content = self._store.thumb_relpath(*args, **kwargs)  # type: ignore[arg-type]
        rels = [named_relpath(content, name) for name in self.names]
        self.paths[rels[0]] = rels
        return rels[0]

    def exists(self, rel: str) -> bool:
        # A file under a row's name may be an earlier run's, of other bytes: always written.
        return False if rel in self.paths else self._store.exists(rel)

    def atomic_path(self, rel: str) -> contextlib.AbstractContextManager[Path]:
        rels = self.paths.get(rel)
        return self._store.atomic_path(rel) if rels is None else self._store.atomic_paths(rels)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)
