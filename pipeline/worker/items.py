"""A source's outcome as the catalog rows of its manifest rows (ItemResult), failures included."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from pipeline.errors import ErrorClass
from pipeline.models import FetchResult, ImageInfo, ItemResult, ManifestRow, Status


@dataclass(slots=True)
class _SourceOutcome:
    """What happened to one unique source; shared by every row that names it."""

    fetch: FetchResult
    image: ImageInfo | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None
    # --layout mirror|key: each thumbnail path of ``image`` (the first row's name) → the
    # paths of every row of the source, in row order (NamedStore.paths).
    named: dict[str, list[str]] | None = None

    def image_of(self, index: int) -> ImageInfo | None:
        """The image as the source's ``index``-th row sees it: its own thumbnail names."""
        if self.image is None or not self.named:
            return self.image
        named = self.named
        thumbs = tuple(replace(t, path=named[t.path][index]) if t.path in named else t for t in self.image.thumbnails)
        return replace(self.image, thumbnails=thumbs)


def _status(error_class: ErrorClass | None) -> Status:
    if error_class is None:
        return Status.OK
    if error_class is ErrorClass.INVALID:
        # One rule (README, "status"): the class `invalid` is always the status `invalid`,
        # the row's URL or local path is unusable, whether the manifest reader saw it ("no such
        # local file") or the worker did (the file vanished, is a directory, cannot be read;
        # a URL aiohttp refuses).
        return Status.INVALID
    if error_class is ErrorClass.OPTED_OUT:
        return Status.OPTED_OUT
    return Status.FAILED


def _item(row: ManifestRow, outcome: _SourceOutcome | None, index: int = 0) -> ItemResult:
    if row.invalid is not None or outcome is None:
        return ItemResult(
            row.row, row.key, row.url, Status.INVALID, ErrorClass.INVALID,
            f"line {row.line}: {row.invalid}", extra=row.extra,
        )  # fmt: skip
    f = outcome.fetch
    return ItemResult(
        row=row.row,
        key=row.key,
        url=row.url,
        status=_status(outcome.error_class),
        error_class=outcome.error_class,
        error_message=outcome.error_message,
        final_url=f.final_url,
        http_status=f.http_status,
        attempts=f.attempts,
        redirects=f.redirects,
        mime=f.mime,
        image=outcome.image_of(index),
        fetch_ms=f.elapsed_ms,
        extra=row.extra,
    )


def invalid_item(row: ManifestRow) -> ItemResult:
    """The catalog row of a manifest row that was unusable (nothing to fetch)."""
    return _item(row, None)


def failed_items(rows: Iterable[ManifestRow], message: str) -> list[ItemResult]:
    """``rows`` recorded as ``internal`` failures (e.g. their worker kept dying); invalid rows
    keep their own reason."""
    return [
        _item(row, None)
        if row.invalid is not None
        else ItemResult(row.row, row.key, row.url, Status.FAILED, ErrorClass.INTERNAL, message, extra=row.extra)
        for row in rows
    ]
