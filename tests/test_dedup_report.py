"""The ``--report`` page in a real headless browser (Debian's chromium).

Chromium runs the page's script from a file:// URL and prints the DOM it built. Without a
chromium binary the tests skip locally but fail in CI (CI=true), where .ci/run installs
the ``chromium`` package.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from conftest import encode, photo

from pipeline.catalog import CATALOG_NAME
from pipeline.cli import main
from pipeline.dedup.report import write_report

pytestmark = pytest.mark.timeout(180)

_CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-file-access-from-files", "--virtual-time-budget=5000",
)  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: CI must install Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _dump_dom(page: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.run(
            [_chromium(), *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Dom(HTMLParser):
    """The few things the tests read from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.groups: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "section" and a.get("class") == "group":
            self.groups.append(a["data-group"] or "")
        elif tag == "img":
            self.images.append(a["src"] or "")


def _render(page: Path) -> _Dom:
    dom = _Dom()
    dom.feed(_dump_dom(page))
    return dom


def _out_with_groups(root: Path, groups: int, per_group: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    for g in range(groups):
        base = photo(320, 240, 500 + g)
        for k in range(per_group):
            im = base.resize((320 - 40 * k, 240 - 30 * k))
            (images / f"g{g:03d}_{k}.jpg").write_bytes(encode(im, "JPEG", quality=90 - 10 * k))
    (images / "alone.png").write_bytes(encode(photo(200, 200, 999), "PNG"))
    out = root / "out"
    result = CliRunner().invoke(main, ["run", str(images), "-o", str(out), "-q", "--procs", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_report_opens_in_a_browser_and_shows_every_group(tmp_path: Path) -> None:
    _chromium()
    out = _out_with_groups(tmp_path, groups=3, per_group=3)
    report = tmp_path / "pages" / "dups.html"  # a new folder, not in OUT: paths relative to the page
    result = CliRunner().invoke(main, ["dedup", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert f"Report: {report} (3 groups)" in result.output
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network

    dom = _render(report)
    assert dom.body.get("data-ready") == "1", dom.body
    assert "data-error" not in dom.body, dom.body["data-error"]
    assert (dom.body["data-groups"], dom.body["data-images"]) == ("3", "9")
    db = sqlite3.connect(out / CATALOG_NAME)
    assert sorted(dom.groups) == sorted(
        str(g) for (g,) in db.execute("SELECT DISTINCT group_id FROM dedup_members")
    )
    assert len(dom.images) == 9
    for src in dom.images:  # every thumbnail resolves from the page's folder
        assert not src.startswith(("/", "file:")), src
        assert (report.parent / unquote(src)).is_file(), src


def test_report_pages_ten_thousand_groups(tmp_path: Path) -> None:
    _chromium()
    out = _out_with_groups(tmp_path, groups=1, per_group=2)
    # 10,000 groups in the catalog's dedup table: the page must draw one page of them.
    db = sqlite3.connect(out / CATALOG_NAME)
    rows = [r for (r,) in db.execute("SELECT row FROM items WHERE status = 'ok'")]
    assert CliRunner().invoke(main, ["dedup", str(out)]).exit_code == 0
    db.execute("DELETE FROM dedup_members")
    db.executemany(
        "INSERT INTO items (row, shard_id, key, url, status, attempts, redirects, sha256, width, height, format, bytes, "
        "thumbnails, updated_at) SELECT ?, shard_id, ? || key, url, status, attempts, redirects, sha256, width, height, "
        "format, bytes, thumbnails, updated_at FROM items WHERE row = ?",
        [(10_000 + n, f"copy{n}-", rows[n % len(rows)]) for n in range(20_000)],
    )
    db.executemany(
        "INSERT INTO dedup_members VALUES (?, ?, ?, 'near', 3, 3)",
        [(10_000 + n, 10_000 + 2 * (n // 2), 10_000 + 2 * (n // 2)) for n in range(20_000)],
    )
    db.commit()
    db.close()
    report = tmp_path / "big.html"
    assert write_report(out, report) == 10_000
    dom = _render(report)
    assert dom.body.get("data-ready") == "1" and "data-error" not in dom.body
    assert (dom.body["data-groups"], dom.body["data-images"]) == ("10000", "20000")
    assert len(dom.groups) == 50 and len(dom.images) == 100  # one page drawn, not 10,000 groups
    assert re.search(r'<span id="pages">200</span>', _dump_dom(report))
