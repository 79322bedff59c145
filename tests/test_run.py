"""End to end: the real CLI, real worker processes, a real HTTP server, the real catalog."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import imagehash
import pytest
from click.testing import CliRunner
from conftest import encode, jpeg, photo
from PIL import Image, ImageOps
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def _hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encode(photo(600, 300, 7), "JPEG", quality=90, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [photo(200, 150, s).convert("P") for s in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _palette_alpha() -> bytes:
    im = photo(300, 200, 9).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    im.info["transparency"] = 0
    return encode(im, "PNG")


GOOD = {
    "big": jpeg(1600, 1200, seed=1),
    "small": jpeg(200, 120, seed=2),
    "rotated": _exif_rotated(),
    "cmyk": encode(photo(500, 400, 3).convert("CMYK"), "JPEG", quality=90),
    "palette": _palette_alpha(),
    "gif": _animated_gif(),
}


def _serve_faults(server: HTTPServer) -> dict[str, int]:
    """Routes that fail in the ways the core run must record; returns request counters."""
    counts = {"flaky": 0, "busy": 0}

    def flaky(request: Request) -> Response:  # 500 then 200
        counts["flaky"] += 1
        return Response("oops", 500) if counts["flaky"] == 1 else Response(GOOD["small"], 200, content_type="image/jpeg")

    def busy(request: Request) -> Response:  # 429 with Retry-After, then 200
        counts["busy"] += 1
        if counts["busy"] == 1:
            return Response("slow down", 429, headers={"Retry-After": "1"})
        return Response(GOOD["small"], 200, content_type="image/jpeg")

    def slow(request: Request) -> Response:
        time.sleep(3)
        return Response(GOOD["small"], 200, content_type="image/jpeg")

    server.expect_request("/flaky.jpg").respond_with_handler(flaky)
    server.expect_request("/busy.jpg").respond_with_handler(busy)
    server.expect_request("/slow.jpg").respond_with_handler(slow)
    server.expect_request("/missing.jpg").respond_with_data("not here", status=404)
    server.expect_request("/huge.jpg").respond_with_data(b"\xff" * 300_000, content_type="image/jpeg")
    server.expect_request("/page.jpg").respond_with_data("<html><body>hi</body></html>", content_type="text/html")
    server.expect_request("/truncated.jpg").respond_with_data(GOOD["big"][: len(GOOD["big"]) // 2], content_type="image/jpeg")
    for name, body in GOOD.items():
        server.expect_request(f"/{name}").respond_with_data(body, content_type="application/octet-stream")
    return counts


def _manifest(tmp_path: Path, server: HTTPServer, names: list[str]) -> Path:
    m = tmp_path / "manifest.csv"
    lines = ["key,url,note"] + [f"{n},{server.url_for('/' + n)},note-{n}" for n in names]
    m.write_text("\n".join(lines) + "\n")
    return m


def _rows(out: Path) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(out / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    return {r["key"]: r for r in db.execute("SELECT * FROM items ORDER BY row")}


def test_end_to_end_two_workers_mixed_good_and_bad(tmp_path: Path, server: HTTPServer) -> None:
    counts = _serve_faults(server)
    names = list(GOOD) + ["flaky.jpg", "busy.jpg", "slow.jpg", "missing.jpg", "huge.jpg", "page.jpg", "truncated.jpg"]
    manifest = _manifest(tmp_path, server, names)
    with manifest.open("a") as f:
        f.write(f"big-again,{server.url_for('/big')},same bytes\n")
        f.write("bad,ftp://example.com/x.jpg,nope\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "run", str(manifest), "--out", str(out), "--allow-private", "--procs", "2", "--shard-size", "4", "--timeout", "1",
        "--retries", "1", "--max-bytes", "250000", "--sizes", "256,64",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Done: 15 rows" in result.output

    rows = _rows(out)
    assert len(rows) == 15
    status = {k: (r["status"], r["error_class"]) for k, r in rows.items()}
    assert status["missing.jpg"] == ("failed", "http_4xx") and rows["missing.jpg"]["http_status"] == 404
    assert rows["missing.jpg"]["attempts"] == 1  # a 404 is never retried
    assert status["flaky.jpg"] == ("ok", None) and rows["flaky.jpg"]["attempts"] == 2
    assert status["busy.jpg"] == ("ok", None) and rows["busy.jpg"]["attempts"] == 2
    assert counts == {"flaky": 2, "busy": 2}
    assert status["slow.jpg"] == ("failed", "timeout")
    assert status["huge.jpg"] == ("failed", "too_large")
    assert status["page.jpg"] == ("failed", "not_image")
    assert status["truncated.jpg"] == ("failed", "truncated")
    assert status["bad"] == ("invalid", "invalid") and "unsupported scheme" in rows["bad"]["error_message"]
    assert json.loads(rows["bad"]["extra"]) == {"note": "nope"}

    for name, body in GOOD.items():
        row = rows[name]
        assert row["status"] == "ok", (name, row["error_message"])
        assert row["sha256"] == hashlib.sha256(body).hexdigest()
        assert row["bytes"] == len(body)
        thumbs = {t["size"]: t for t in json.loads(row["thumbnails"])}
        assert set(thumbs) == {256, 64}
        with Image.open(out / thumbs[256]["path"]) as t256, Image.open(out / thumbs[64]["path"]) as t64:
            assert t256.format == "JPEG" and t256.mode == "RGB"
            assert max(t256.size) == min(256, max(row["width"], row["height"]))  # never upscaled
            assert max(t64.size) == 64
            # Independent reference: imagehash on the original, displayed upright.
            reference = ImageOps.exif_transpose(Image.open(io.BytesIO(body)).convert("RGB"))
            assert _hamming(row["dhash"], str(imagehash.dhash(reference))) <= 8, name
            assert _hamming(row["phash"], str(imagehash.phash(reference))) <= 8, name
        if row["original_path"]:
            assert (out / row["original_path"]).read_bytes() == body

    assert (rows["big"]["width"], rows["big"]["height"]) == (1600, 1200)
    assert (rows["rotated"]["width"], rows["rotated"]["height"]) == (300, 600)  # EXIF applied
    assert rows["cmyk"]["mode"] == "CMYK" and rows["gif"]["n_frames"] == 3
    assert rows["palette"]["mode"] == "P"
    # The same content under two rows is stored once.
    assert rows["big"]["sha256"] == rows["big-again"]["sha256"]
    assert len(list((out / "originals").rglob("*.*"))) == len(GOOD)
    assert not any((out / ".tmp").iterdir())

    status_out = CliRunner().invoke(main, ["status", str(out), "--json"])
    counts_json = json.loads(status_out.output)
    assert counts_json["by_status"] == {"ok": 9, "failed": 5, "invalid": 1}
    assert counts_json["shards_done"] == counts_json["shards_total"] == 4


def test_rerun_resumes_and_refuses_other_options(tmp_path: Path, server: HTTPServer) -> None:
    for i in range(6):
        server.expect_request(f"/{i}.jpg").respond_with_data(jpeg(120, 90, seed=i))
    manifest = _manifest(tmp_path, server, [f"{i}.jpg" for i in range(6)])
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1", "--shard-size", "2", "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert len(server.log) == 6
    again = CliRunner().invoke(main, args[:-1])
    assert again.exit_code == 0 and "3 shards already done" in again.output
    assert len(server.log) == 6  # nothing fetched twice

    refused = CliRunner().invoke(main, args + ["--sizes", "128"])
    assert refused.exit_code == 2
    assert "Error:" in refused.output and "options.sizes" in refused.output and "--force" in refused.output
    forced = CliRunner().invoke(main, args + ["--sizes", "128", "--force"])
    assert forced.exit_code == 0
    assert len(server.log) == 12
    assert all(json.loads(r["thumbnails"])[0]["size"] == 128 for r in _rows(out).values())


def test_retry_failed_refetches_only_failed_rows(tmp_path: Path, server: HTTPServer) -> None:
    calls = []

    def later(request: Request) -> Response:  # down during the first run, back for the second
        calls.append(request.path)
        return Response("no", 503) if len(calls) == 1 else Response(jpeg(100, 80, seed=2), 200)

    server.expect_request("/ok.jpg").respond_with_data(jpeg(100, 80, seed=1))
    server.expect_request("/later.jpg").respond_with_handler(later)
    manifest = _manifest(tmp_path, server, ["ok.jpg", "later.jpg"])
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1", "--retries", "0", "-q"]
    first = CliRunner().invoke(main, args + ["--max-failure-rate", "0.1"])
    assert first.exit_code == 3 and "above --max-failure-rate" in first.output
    assert _rows(out)["later.jpg"]["error_class"] == "http_5xx"
    second = CliRunner().invoke(main, args + ["--retry-failed"])
    assert second.exit_code == 0
    assert {k: r["status"] for k, r in _rows(out).items()} == {"ok.jpg": "ok", "later.jpg": "ok"}
    assert sorted(e[0].path for e in server.log) == ["/later.jpg", "/later.jpg", "/ok.jpg"]


def test_export_formats_one_row_per_manifest_row(tmp_path: Path, server: HTTPServer) -> None:
    server.expect_request("/a.jpg").respond_with_data(jpeg(100, 80, seed=1))
    manifest = _manifest(tmp_path, server, ["a.jpg", "a.jpg"])
    with manifest.open("a") as f:
        f.write("x,,empty\n")
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1", "-q"]).exit_code == 0
    assert len(server.log) == 1  # a repeated URL is fetched once in a shard

    csv_out = CliRunner().invoke(main, ["export", str(out), "--format", "csv"]).output.splitlines()
    assert csv_out[0].startswith("row,key,url,") and csv_out[0].endswith(",thumb_256,note")
    assert len(csv_out) == 4
    jsonl = tmp_path / "e.jsonl"
    assert CliRunner().invoke(main, ["export", str(out), "-f", "jsonl", "-o", str(jsonl)]).exit_code == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "invalid"]
    assert records[0]["sha256"] == records[1]["sha256"] and records[2]["note"] == "empty"
    assert records[0]["thumb_256"].startswith("thumbs/256-q85/")

    pq = pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "e.parquet"
    assert CliRunner().invoke(main, ["export", str(out), "-f", "parquet", "-o", str(parquet)]).exit_code == 0
    table = pq.read_table(parquet)
    assert table.num_rows == 3 and table.column("width").to_pylist()[0] == 100


def test_clear_errors_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "m.csv"
    bad.write_text("link\nhttp://a.test/x.jpg\n")
    result = runner.invoke(main, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Error: m.csv has no 'url' column" in result.output
    result = runner.invoke(main, ["run", str(bad), "--procs", "0"])
    assert result.exit_code == 2 and "Error: --procs must be at least 1" in result.output
    result = runner.invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 2 and "Error: no catalog" in result.output  # a usage error
    assert runner.invoke(main, ["--version"]).output.startswith("pipeline, version ")


def test_every_command_has_help() -> None:
    for command in main.commands.values():
        assert command.help and len(command.help) > 30, command.name
        for param in command.params:
            if isinstance(param, __import__("click").Option):
                assert param.help, f"{command.name} {param.name}"


def test_resume_after_parent_is_killed_mid_run(tmp_path: Path, server: HTTPServer) -> None:
    """SIGKILL the whole run between shards; the rerun fetches only what was not committed."""
    body = jpeg(120, 90, seed=5)
    # Every row starts at once (40 slots); rows from 8 on wait until the kill, so shards 0
    # and 1 finish and no other one can, however fast this machine is (with fewer slots than
    # rows, a held row could take a slot before row 6: waiters are not served in row order).
    killed = threading.Event()

    def slow_image(request: Request) -> Response:
        if int(request.args["n"]) >= 8:
            killed.wait(timeout=60)
        return Response(body, 200, content_type="image/jpeg")

    server.expect_request("/img").respond_with_handler(slow_image)
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"{server.url_for('/img')}?n={i}\n" for i in range(40)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cli", "run", str(manifest), "--out", str(out), "--allow-private", "--procs", "1",
           "--shard-size", "4", "--concurrency", "40", "--per-host", "40", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        done = _wait_for_shards(out / "catalog.sqlite", at_least=2, deadline=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, like a power cut
        proc.wait(timeout=10)
        killed.set()
    assert done == 2

    committed = _rows(out)
    fetched_before = {e[0].args["n"] for e in server.log}
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert rerun.returncode == 0, rerun.stderr
    rows = _rows(out)
    assert sorted(int(r["url"].split("=")[1]) for r in rows.values()) == list(range(40))  # each row once
    assert all(r["status"] == "ok" for r in rows.values()), [(k, r["error_class"], r["error_message"]) for k, r in rows.items() if r["status"] != "ok"]
    requests_per_n: dict[str, int] = {}
    for entry in server.log:
        requests_per_n[entry[0].args["n"]] = requests_per_n.get(entry[0].args["n"], 0) + 1
    for row in committed.values():  # rows of committed shards were not fetched again
        assert requests_per_n[row["url"].split("=")[1]] == 1
    assert set(requests_per_n) == {str(i) for i in range(40)} and fetched_before
    assert not any((out / ".tmp").iterdir())


def _wait_for_shards(catalog: Path, *, at_least: int, deadline: float) -> int:
    """Poll the real catalog until enough shards are committed (bounded in time)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if catalog.exists():
            try:
                with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
                    n = db.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
                if n >= at_least:
                    return n
            except sqlite3.OperationalError:
                pass  # the schema is being created
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} shards committed within {deadline} s")


def test_python_api_runs_the_bundled_samples(tmp_path: Path) -> None:
    """The README's quick start, through the library: the samples' awkward cases end up as documented."""
    from pipeline import run

    seen = []
    summary = run(ROOT / "samples" / "manifest.csv", out=tmp_path / "out", procs=1, on_progress=seen.append)
    assert summary.complete and seen and seen[-1].rows == summary.rows
    rows = _rows(tmp_path / "out")
    assert rows["truncated"]["error_class"] == "truncated"
    assert rows["not_an_image"]["error_class"] == "not_image"
    assert {rows[k]["status"] for k in ("empty_url", "ftp_url", "missing_file")} == {"invalid"}
    assert rows["photo_001"]["sha256"] == rows["photo_001_copy"]["sha256"] == rows["photo_001_again"]["sha256"]
    assert (rows["exif_rotated"]["width"], rows["exif_rotated"]["height"]) == (360, 480)  # stored 480x360, orientation 6
    assert rows["animated"]["n_frames"] == 3
    assert summary.by_status["ok"] == len([r for r in rows.values() if r["status"] == "ok"]) >= 30
