"""Whether OUT's catalog may be resumed by this run: the fingerprint and the whole-manifest hash."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.config import RunConfig
from pipeline.errors import ResumeRefused
from pipeline.layout import default_layout
from pipeline.manifest.read import identity
from pipeline.manifest.spec import ManifestSpec

# Not compared: a manifest moved or renamed with the same content is the same run (its
# size and hashes still have to agree). Catalogs before this held it in the fingerprint.
_ADVISORY = frozenset({"path"})


def _fingerprint(spec: ManifestSpec, config: RunConfig) -> dict[str, Any]:
    manifest = {k: v for k, v in identity(spec).items() if k not in _ADVISORY}
    return {"manifest": manifest, "options": config.fingerprint_options()}


def settle_layout(config: RunConfig, spec: ManifestSpec, catalog: Catalog) -> RunConfig:
    """The layout given, else the default for this kind of manifest; but a catalog begun
    before layouts existed (no layout in its fingerprint) resumes content-addressed, as it
    started, rather than being refused for a default it never had."""
    if config.layout is not None:
        return config
    stored = catalog.get_meta("fingerprint")
    if stored is not None and "layout" not in stored.get("options", {}) and not config.force:
        return replace(config, layout="content")
    return replace(config, layout=default_layout(spec.kind))


def check_fingerprint(catalog: Catalog, spec: ManifestSpec, config: RunConfig) -> None:
    """Resume only the same manifest with the same result-changing options."""
    wanted = _fingerprint(spec, config)
    stored = catalog.get_meta("fingerprint")
    if stored is not None:
        differences = tuple(
            f"{part}.{name}"
            for part in ("manifest", "options")
            for name in sorted(set(stored.get(part, {})) | set(wanted[part]))
            if not (part == "manifest" and name in _ADVISORY)
            and stored.get(part, {}).get(name) != wanted[part].get(name)
        )
        if not differences:
            catalog.set_meta("manifest_path", str(spec.path))  # where it was last read: advisory
            return
        if not config.force:
            raise ResumeRefused(
                f"{config.out} holds a run of another manifest or with other options; "
                "use another --out, or --force to discard its catalog and start over",
                differences,
            )
        catalog.reset()
    catalog.set_meta("fingerprint", wanted)
    catalog.set_meta("manifest_path", str(spec.path))


class WholeManifest:
    """The SHA-256 of every byte of the manifest file, read on a thread beside the run.

    The fingerprint hashes only the size and the first and last MiB (cheap, checked before
    anything runs), so a same-length edit in the middle of a bigger manifest resumed into a
    mix of two manifests. The whole hash is stored with the run's first read (as soon as it
    is ready) and compared on every later one before any of its rows is committed, and at
    the latest before the run records its shard total (what marks it complete). A mismatch
    stops the run (``ResumeRefused``, exit 2). Reading the file once more beside the row
    stream keeps ``manifest.py`` as it is.
    """

    META = "manifest_sha256"

    def __init__(self, spec: ManifestSpec, out: Path | str, catalog: Catalog) -> None:
        self.spec, self.out = spec, out
        self.checked = spec.kind == "dir"  # a folder's identity already lists every file
        self.resuming = catalog.get_meta(self.META) is not None  # then nothing commits unchecked
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._hash, name="pipeline-hash-manifest", daemon=True)
        if not self.checked:
            self._thread.start()

    def _hash(self) -> None:
        digest = hashlib.sha256()
        try:
            with self.spec.path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            return  # the row stream reports an unreadable manifest itself
        self._digest = digest.hexdigest()

    def differs(self, catalog: Catalog) -> bool:
        """Whether the catalog holds another manifest's hash (waits for this one)."""
        if self._thread.ident is not None:
            self._thread.join()
        stored = catalog.get_meta(self.META)
        return None not in (stored, self._digest) and stored != self._digest

    def check(self, catalog: Catalog, *, wait: bool = False) -> None:
        """Compare with (or store) the hash of the run's first read: on a resume before
        anything is committed, else once the hash is ready (or ``wait``)."""
        if self.checked or (self._thread.is_alive() and not (wait or self.resuming)):
            return
        self.checked = True
        if self.differs(catalog):
            raise ResumeRefused(
                f"{self.spec.path} changed since the run in {self.out} started: same size and same "
                "first and last MiB, but other bytes in between, so its rows would mix two manifests; "
                "nothing more was recorded. Use another --out, or --force to discard the catalog and start over"
            )
        if self._digest is not None and catalog.get_meta(self.META) is None:
            catalog.set_meta(self.META, self._digest)
