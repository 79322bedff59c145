"""Exceptions must cross process boundaries unchanged."""

from __future__ import annotations

import pickle

import pytest

from pipeline.errors import (
    CatalogError,
    DedupError,
    ErrorClass,
    ItemError,
    ManifestError,
    PipelineError,
    ResumeRefused,
    StorageError,
    UsageError,
)  # fmt: skip


@pytest.mark.parametrize(
    "exc",
    [
        PipelineError("x"),
        UsageError("bad option"),
        ManifestError("no url column"),
        ResumeRefused("other manifest", ("manifest.sha256",)),
        CatalogError("corrupt"),
        StorageError("disk full"),
        DedupError("no images"),
        ItemError(ErrorClass.HTTP_4XX, "HTTP 404 Not Found", 404),
    ],
)
def test_every_error_pickles_round_trip(exc: Exception) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.args == exc.args


def test_item_error_keeps_its_fields() -> None:
    back = pickle.loads(pickle.dumps(ItemError(ErrorClass.TOO_LARGE, "big", None)))
    assert back.error_class is ErrorClass.TOO_LARGE and back.message == "big"
    assert str(ResumeRefused("m", ("a", "b"))) == "m (differs: a, b)"
