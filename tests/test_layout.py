"""Output layouts (issue 12): thumbnails named after their source (mirror) or their key (key),
or by content as before (content). Real runs of the real CLI on real folders and a real HTTP
server; the name function is fuzzed with arbitrary text."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner
from conftest import encode, jpeg, photo
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pytest_httpserver import HTTPServer
from test_run import _wait_for_shards
from werkzeug import Request, Response

from pipeline.cli import main
from pipeline.layout import IMAGE_EXTS, Namer, safe_stem
from pipeline.models import ManifestRow

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "thumbs/256-q85"

pytestmark = pytest.mark.timeout(180)


def _run(*args: str) -> object:
    result = CliRunner().invoke(main, ["run", *args, "--procs", "2", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _rows(out: Path) -> dict[str, dict[str, object]]:
    """Catalog rows by key."""
    with sqlite3.connect(f"file:{out / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM items ORDER BY row")}


def _thumb(row: dict[str, object]) -> str:
    (thumb,) = json.loads(str(row["thumbnails"]))
    return str(thumb["path"])


def _inside(out: Path, rel: str) -> bool:
    return (out / rel).resolve().is_relative_to(out.resolve())


def _folder(tmp_path: Path) -> Path:
    """A folder of photos with nested dirs, awkward names, a duplicate by content and names
    that collide once the extension is .jpg (and once case is ignored)."""
    top = tmp_path / "photos"
    beach = jpeg(320, 240, seed=1)
    files = {
        "2019/Beach.JPG": jpeg(320, 240, seed=2),
        "2019/beach.jpg": beach,
        "2019/beach.png": encode(photo(200, 150, seed=3), "PNG"),
        "2019/copy of beach.jpg": beach,
        "x.png": encode(photo(100, 80, seed=4), "PNG"),
        "x.jpg/inner.jpg": jpeg(90, 60, seed=5),
        "weird/a:b?c*.jpg": jpeg(80, 60, seed=6),
        "weird/new\nline.jpg": jpeg(80, 60, seed=7),
        "weird/con.jpg": jpeg(80, 60, seed=8),
        "weird/trail. .jpg": jpeg(80, 60, seed=9),
        "weird/" + "é" * 120 + ".jpg": jpeg(80, 60, seed=10),
    }
    for rel, data in files.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return top


FOLDER_NAMES = {
    "2019/Beach.JPG": "2019/Beach.jpg",
    "2019/beach.jpg": "2019/beach~2.jpg",  # same name as Beach.jpg but for case
    "2019/beach.png": "2019/beach~3.jpg",  # same name once the extension is .jpg
    "2019/copy of beach.jpg": "2019/copy of beach.jpg",
    "x.png": "x.jpg",
    "x.jpg/inner.jpg": "x%2Ejpg/inner.jpg",  # a folder may not take a thumbnail's name
    "weird/a:b?c*.jpg": "weird/a%3Ab%3Fc%2A.jpg",
    "weird/con.jpg": "weird/%63on.jpg",  # a Windows device name
    "weird/trail. .jpg": "weird/trail%2E%20.jpg",
}


def test_folder_default_is_mirror_with_collisions_suffixed(tmp_path: Path) -> None:
    top, out = _folder(tmp_path), tmp_path / "out"
    _run(str(top), "--out", str(out))
    rows = _rows(out)
    # a line break in a file name: the manifest's own rule makes the row invalid (no file)
    assert rows.pop("weird/new\nline.jpg")["error_message"] == "line 8: url contains control characters"
    assert {r["status"] for r in rows.values()} == {"ok"}
    for key, name in FOLDER_NAMES.items():
        assert _thumb(rows[key]) == f"{VARIANT}/{name}", key
    long_key = "weird/" + "é" * 120 + ".jpg"
    long_name = PurePosixPath(_thumb(rows[long_key])).name
    assert len(long_name.encode()) <= 255 and long_name.startswith("é" * 50) and long_name.endswith(".jpg")
    paths = [_thumb(r) for r in rows.values()]
    assert len({unicodedata.normalize("NFC", p).casefold() for p in paths}) == len(paths)
    for row in rows.values():
        rel = _thumb(row)
        assert _inside(out, rel)
        with Image.open(out / rel) as im:
            assert im.format == "JPEG" and max(im.size) == min(256, max(row["width"], row["height"]))
    # the same bytes under two names: one file each, identical
    assert (out / _thumb(rows["2019/beach.jpg"])).read_bytes() == (out / _thumb(rows["2019/copy of beach.jpg"])).read_bytes()
    assert not any((out / "thumbs" / "256-q85").glob("??/" + "?" * 64 + ".jpg"))  # nothing content-named
    assert not any((out / ".tmp").iterdir())


def test_rerun_resumes_without_rewriting_or_renaming(tmp_path: Path) -> None:
    top, out = _folder(tmp_path), tmp_path / "out"
    _run(str(top), "--out", str(out), "--layout", "mirror")
    before = {key: _thumb(r) for key, r in _rows(out).items() if r["status"] == "ok"}
    stats = {rel: (os.stat(out / rel).st_ino, os.stat(out / rel).st_mtime_ns) for rel in before.values()}
    result = CliRunner().invoke(main, ["run", str(top), "--out", str(out), "--layout", "mirror", "--procs", "2"])
    assert result.exit_code == 0, result.output
    assert {key: _thumb(r) for key, r in _rows(out).items() if r["status"] == "ok"} == before
    assert {rel: (os.stat(out / rel).st_ino, os.stat(out / rel).st_mtime_ns) for rel in before.values()} == stats
    refused = CliRunner().invoke(main, ["run", str(top), "--out", str(out), "--layout", "content", "-q"])
    assert refused.exit_code == 2 and "options.layout" in refused.output


def test_static_partitions_give_every_row_the_name_a_single_run_gives(tmp_path: Path) -> None:
    top = _folder(tmp_path)
    single, shared = tmp_path / "single", tmp_path / "shared"
    _run(str(top), "--out", str(single), "--shard-size", "2")
    for index in ("0", "1"):
        _run(str(top), "--out", str(shared), "--shard-size", "2", "--num-workers", "2", "--worker-index", index)
    assert CliRunner().invoke(main, ["merge", str(shared)]).exit_code == 0
    names = {k: _thumb(r) for k, r in _rows(single).items() if r["status"] == "ok"}
    assert {k: _thumb(r) for k, r in _rows(shared).items() if r["status"] == "ok"} == names
    assert all((shared / rel).is_file() for rel in names.values())


def test_a_folder_catalog_from_before_layouts_resumes_content_addressed(tmp_path: Path) -> None:
    """A folder run begun before --layout existed has no layout in its fingerprint: resumed
    without --layout it stays content-addressed (not refused for the new mirror default)."""
    top, out = _folder(tmp_path), tmp_path / "out"
    _run(str(top), "--out", str(out), "--layout", "content")
    with sqlite3.connect(out / "catalog.sqlite") as db:  # as an older pipeline wrote it
        (value,) = db.execute("SELECT value FROM meta WHERE name = 'fingerprint'").fetchone()
        fingerprint = json.loads(value)
        del fingerprint["options"]["layout"]
        db.execute("UPDATE meta SET value = ? WHERE name = 'fingerprint'", (json.dumps(fingerprint),))
        db.execute("DELETE FROM items WHERE key LIKE 'weird/%'")  # killed before these
        db.execute("DELETE FROM shards")
    _run(str(top), "--out", str(out))
    rows = _rows(out)
    assert len(rows) == 11 and all(
        _thumb(r) == f"{VARIANT}/{r['sha256'][:2]}/{r['sha256']}.jpg" for r in rows.values() if r["status"] == "ok"
    )


def test_key_layout_names_files_by_key_and_nothing_escapes(tmp_path: Path) -> None:
    images = tmp_path / "m"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.jpg").write_bytes(jpeg(120, 90, seed=20 + i))
    keys = [
        ("../../escape", 0), ("/etc/passwd", 1), ("a/b/c", 2), ("dup", 3), ("dup", 0), ("DUP", 1),
        (".", 2), ("..", 3), ("nul\u0000here", 0), ("con", 1), ("same-1", 2), ("same-2", 2),
        ("x" * 300, 3),
    ]  # fmt: skip
    manifest = images / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"url": f"{i}.jpg", "key": k}) + "\n" for k, i in keys))
    out = tmp_path / "out"
    _run(str(manifest), "--out", str(out), "--layout", "key")
    with sqlite3.connect(out / "catalog.sqlite") as db:
        paths = [_thumb({"thumbnails": t}) for (t,) in db.execute("SELECT thumbnails FROM items ORDER BY row")]
    names = [p.removeprefix(VARIANT + "/") for p in paths]
    assert names[:12] == [
        "%2E%2E/%2E%2E/escape.jpg", "etc/passwd.jpg", "a/b/c.jpg", "dup.jpg", "dup~2.jpg", "DUP~3.jpg",
        "%2E.jpg", "%2E%2E.jpg", "nul%00here.jpg", "%63on.jpg", "same-1.jpg", "same-2.jpg",
    ]  # fmt: skip
    assert len(PurePosixPath(names[12]).name.encode()) <= 255
    for rel in paths:
        assert _inside(out, rel) and (out / rel).is_file()
    # one source, two names: decoded once, the second name is a hard link of the first
    assert os.path.samefile(out / paths[10], out / paths[11])
    assert not (tmp_path / "escape.jpg").exists() and not any((tmp_path / "etc").glob("*"))


def test_url_manifest_default_is_content_and_mirror_is_host_and_path(tmp_path: Path, server: HTTPServer) -> None:
    body = jpeg(160, 120, seed=30)
    for path in ("/img/a.jpg", "/img/b.jpg", "/dir/", "/photo one.jpg"):  # the server matches decoded paths
        server.expect_request(path).respond_with_data(body, content_type="image/jpeg")
    urls = [server.url_for("/img/a.jpg"), server.url_for("/img/b.jpg") + "?x=1", server.url_for("/img/b.jpg") + "?x=2",
            server.url_for("/dir/"), server.url_for("/photo%20one.jpg")]  # fmt: skip
    manifest = tmp_path / "urls.txt"
    manifest.write_text("".join(u + "\n" for u in urls))
    content = tmp_path / "content"
    _run(str(manifest), "--out", str(content), "--allow-private")
    (sha,) = {r["sha256"] for r in _rows(content).values()}
    assert {_thumb(r) for r in _rows(content).values()} == {f"{VARIANT}/{sha[:2]}/{sha}.jpg"}

    mirror = tmp_path / "mirror"
    _run(str(manifest), "--out", str(mirror), "--allow-private", "--layout", "mirror")
    host = f"127.0.0.1%3A{server.port}"
    assert [_thumb(r) for r in _rows(mirror).values()] == [
        f"{VARIANT}/{host}/img/a.jpg", f"{VARIANT}/{host}/img/b%3Fx=1.jpg", f"{VARIANT}/{host}/img/b%3Fx=2.jpg",
        f"{VARIANT}/{host}/dir/index.jpg", f"{VARIANT}/{host}/photo one.jpg",
    ]  # fmt: skip
    for row in _rows(mirror).values():
        assert (mirror / _thumb(row)).is_file()


def test_export_and_dedup_take_paths_from_the_catalog(tmp_path: Path) -> None:
    top, out = _folder(tmp_path), tmp_path / "out"
    _run(str(top), "--out", str(out))
    result = CliRunner().invoke(main, ["export", str(out), "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    exported = {r["key"]: r for r in map(json.loads, result.output.splitlines())}
    for key, name in FOLDER_NAMES.items():
        assert exported[key]["thumb_256"] == f"{VARIANT}/{name}"
    report = tmp_path / "dups.html"
    dedup = CliRunner().invoke(main, ["dedup", str(out), "--report", str(report)])
    assert dedup.exit_code == 0, (dedup.output, dedup.exception)
    page = report.read_text()  # the exact pair, its names quoted as URLs (a space, a %)
    assert '"t":"out/thumbs/256-q85/2019/copy%20of%20beach.jpg"' in page and '"t":"out/thumbs/256-q85/2019/beach~2.jpg"' in page


def test_sigkill_then_rerun_leaves_no_temp_files_and_the_same_names(tmp_path: Path, server: HTTPServer) -> None:
    """SIGKILL the whole run mid-way; the rerun finishes with every name where it belongs,
    no temp file left, and the rows committed before the kill untouched."""
    body = jpeg(120, 90, seed=40)
    released = threading.Event()

    def slow_image(request: Request) -> Response:
        if int(request.args["n"]) >= 4:  # rows 8 on
            released.wait(timeout=60)
        return Response(body, 200, content_type="image/jpeg")

    server.expect_request("/img").respond_with_handler(slow_image)
    manifest = tmp_path / "m.txt"
    # rows 2k and 2k + 1 name the same URL (one download, two names): every second name collides
    manifest.write_text("".join(f"{server.url_for('/img')}?n={i // 2}\n" for i in range(40)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cli", "run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1",
           "--shard-size", "4", "--concurrency", "40", "--per-host", "40", "--layout", "mirror", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        _wait_for_shards(out / "catalog.sqlite", at_least=2, deadline=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        released.set()
    committed = {key: _thumb(r) for key, r in _rows(out).items()}
    assert committed
    stats = {rel: os.stat(out / rel).st_ino for rel in committed.values()}
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert rerun.returncode == 0, rerun.stderr
    rows = _rows(out)
    assert len(rows) == 40 and {r["status"] for r in rows.values()} == {"ok"}
    host = f"127.0.0.1%3A{server.port}"
    assert {key: _thumb(r) for key, r in rows.items()} == {
        str(i): f"{VARIANT}/{host}/img%3Fn={i // 2}{'~2' if i % 2 else ''}.jpg" for i in range(40)
    }
    for i in range(0, 40, 2):
        assert os.path.samefile(out / _thumb(rows[str(i)]), out / _thumb(rows[str(i + 1)]))
    assert {rel: os.stat(out / rel).st_ino for rel in committed.values()} == stats
    assert not any((out / ".tmp").iterdir())


# Any text at all: surrogates (bytes that were not UTF-8), NUL, controls, separators, dots;
# plus the awkward bits often enough that every rule is met.
_AWKWARD = st.sampled_from(["..", ".", "/", "\\", "\x00", "con", "AUX.tar", " ", ".jpg", "%2E", "ab", "é" * 90, "\udce9"])
_TEXT = st.lists(st.one_of(st.text(st.characters(exclude_categories=()), max_size=120), _AWKWARD), max_size=6).map("".join)
_WINDOWS_BAD = set('<>:"|?*\\')
_RESERVED = {"con", "prn", "aux", "nul", *(f"{p}{d}" for p in ("com", "lpt") for d in "0123456789")}


@settings(max_examples=200, deadline=None)
@given(st.lists(_TEXT, max_size=8))
def test_name_function_stays_inside_out_and_makes_valid_file_names(parts: list[str]) -> None:
    stem = safe_stem(parts)
    for name in (stem, f"{stem}~{10**20}"):  # with the longest collision suffix
        rel = f"{VARIANT}/{name}.webp"
        rel.encode("utf-8")  # strict: no lone surrogate
        pure = PurePosixPath(rel)
        assert pure.as_posix() == rel and not pure.is_absolute()
        assert os.path.normpath(os.path.join("/out", rel)).startswith(f"/out/{VARIANT}/")
        for i, part in enumerate(pure.parts):
            assert part not in ("", ".", "..") and len(part.encode()) <= 255, part
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in _WINDOWS_BAD for c in part), part
            assert part[-1] not in ". " and part.split(".")[0].rstrip(" ").casefold() not in _RESERVED, part
            if i < len(pure.parts) - 1:  # a folder never takes a thumbnail's name
                assert part.rpartition(".")[2].lower() not in IMAGE_EXTS or "." not in part, part
    with tempfile.TemporaryDirectory() as out:  # and this filesystem takes it, inside OUT
        target = Path(out, VARIANT, stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        assert target.resolve().is_relative_to(Path(out).resolve())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "A", "b", "a~2", "A~2", "e\u0301", "\u00e9", "É", "ss", "ß"]), max_size=30))
def test_namer_gives_every_row_a_name_no_other_row_has_ignoring_case(stems: list[str]) -> None:
    namer = Namer()
    names = [namer.assign(s) for s in stems]
    folded = [unicodedata.normalize("NFC", unicodedata.normalize("NFC", n).casefold()) for n in names]
    assert len(set(folded)) == len(folded)
    again = Namer()
    assert [again.assign(s) for s in stems] == names  # deterministic
    assert all(n == s or n.startswith(s + "~") for n, s in zip(names, stems, strict=True))


def test_mirror_of_a_url_drops_scheme_and_credentials_and_keeps_the_query() -> None:
    from pipeline.layout import mirror_parts

    row = ManifestRow(0, 1, "0", "https://user:pw@Example.COM:8443/a/b%2Fc/photo.JPG?w=2#frag", source="x")
    assert safe_stem(mirror_parts(row, "/", "/")) == "example.com%3A8443/a/b%2Fc/photo%3Fw=2"


