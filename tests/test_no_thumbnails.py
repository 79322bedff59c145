"""``--no-thumbnails`` (benchmark workload W1): download, SHA-256 and keep the original only."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import encode, jpeg, photo
from PIL import Image
from pytest_httpserver import HTTPServer

from pipeline.cli import main
from pipeline.config import ProcessOptions
from pipeline.errors import ErrorClass, ItemError
from pipeline.image.process import process_image
from pipeline.store.local import Store

pytestmark = pytest.mark.timeout(60)

ONLY = ProcessOptions(thumbnails=False)


def test_keeps_original_reads_header_and_decodes_nothing(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: width and height swap
    data = encode(photo(600, 300, 7), "JPEG", quality=90, exif=exif.tobytes())
    info = process_image(data, options=ONLY, store=Store(tmp_path))
    sha = hashlib.sha256(data).hexdigest()
    assert (info.sha256, info.bytes, info.format, info.mode) == (sha, len(data), "JPEG", "RGB")
    assert (info.width, info.height, info.n_frames) == (300, 600, 1)
    assert info.thumbnails == () and info.dhash is None and info.phash is None
    assert (tmp_path / info.original_path).read_bytes() == data
    assert not (tmp_path / "thumbs").exists()


def test_still_refuses_what_is_not_an_allowed_image(tmp_path: Path) -> None:
    with pytest.raises(ItemError) as html:
        process_image(b"<html><body>hi</body></html>", options=ONLY, store=Store(tmp_path))
    assert html.value.error_class is ErrorClass.NOT_IMAGE
    png_only = ProcessOptions(thumbnails=False, formats=("PNG",))
    with pytest.raises(ItemError) as jpg:
        process_image(jpeg(64, 48), options=png_only, store=Store(tmp_path))
    assert jpg.value.error_class is ErrorClass.NOT_IMAGE


def test_cli_no_thumbnails_run(tmp_path: Path, server: HTTPServer) -> None:
    body = jpeg(640, 480, seed=3)
    server.expect_request("/a.jpg").respond_with_data(body, content_type="image/jpeg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"url\n{server.url_for('/a.jpg')}\n")
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1", "-q", "--no-thumbnails"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    row = sqlite3.connect(out / "catalog.sqlite").execute(
        "SELECT status, sha256, width, height, dhash, thumbnails, original_path FROM items"
    ).fetchone()
    assert row[:6] == ("ok", hashlib.sha256(body).hexdigest(), 640, 480, None, "[]")
    assert (out / row[6]).read_bytes() == body
    # The option changes results, so a rerun with thumbnails is refused, not mixed in.
    refused = CliRunner().invoke(main, args[:-1])
    assert refused.exit_code == 2 and "other options" in refused.output
