"""The command line itself: help in sections, the partition options' names, a reader that leaves early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg

from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--procs", "1", "--shard-size", "2", "-q"]


def _folder(tmp_path: Path, count: int = 3) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        (folder / f"{i}.jpg").write_bytes(jpeg(64, 48, seed=i))
    return folder


def _cli(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``python cli.py ARGS`` from the repository root, as bench/ and users run it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE,
        text=True, timeout=90, check=False,
    )  # fmt: skip


def test_run_help_is_plain_text_in_sections() -> None:
    result = _cli("run", "--help")  # stdout is a pipe, as for `pipeline run --help | less`
    assert result.returncode == 0, result.stderr
    headings = [line for line in result.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == [
        "Input:", "Output:", "Images:", "Network:", "Politeness and safety:", "Processes:", "Cluster:",
        "Resume and failures:", "Other options:",
    ]  # fmt: skip
    assert "\x1b" not in result.stdout  # no colours or bold outside a terminal


def test_dedup_help_in_sections() -> None:
    result = CliRunner().invoke(main, ["dedup", "--help"])
    assert result.exit_code == 0
    for heading in ("Input and output:", "Grouping:", "Processes:"):
        assert f"\n{heading}\n" in result.output


def test_manifest_columns_are_one_declaration() -> None:
    run, group = main.commands["run"], main.commands["group-by-host"]
    for name in ("url_column", "key_column"):
        ours = next(p for p in run.params if p.name == name)
        theirs = next(p for p in group.params if p.name == name)
        assert (ours.opts, ours.default, ours.help) == (theirs.opts, theirs.default, theirs.help)


@pytest.mark.parametrize(
    "spelling", [["--partitions", "2", "--partition", "1"], ["--num-workers", "2", "--worker-index", "1"]]
)
def test_partitions_under_both_names(tmp_path: Path, spelling: list[str]) -> None:
    """--partitions/--partition, and the names before them for one more release."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(_folder(tmp_path)), "--out", str(out), *spelling, *QUICK])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.glob("catalog*.sqlite")] == ["catalog-1-of-2.sqlite"]


def test_the_old_partition_names_are_hidden() -> None:
    text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--partitions N" in text and "--partition I" in text
    assert "--num-workers" not in text and "--worker-index" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partitions", "0"], "--partitions must be at least 1"),
        (["--partitions", "2", "--partition", "2"], "--partition must be in 0 .. --partitions - 1"),
        (["--num-workers", "2", "--partition", "-1"], "--partition must be in 0 .. --num-workers - 1"),
        (["--partitions", "2", "--num-workers", "2"], "--partitions and --num-workers are one option"),
    ],
)
def test_partition_options_are_checked_under_the_names_given(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["run", str(_folder(tmp_path, 1)), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert f"Error: {message}" in result.output
    assert not (tmp_path / "out").exists()


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone, as after `| head -1` read its line."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_a_closed_stdout_ends_the_run_quietly(tmp_path: Path) -> None:
    folder, out = _folder(tmp_path), tmp_path / "out"
    write = _closed_pipe()
    try:
        result = _cli("run", str(folder), "--out", str(out), "--procs", "1", stdout=write)
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr
    for noise in ("Traceback", "BrokenPipe", "Exception ignored"):
        assert noise not in result.stderr
    assert "Done:" not in result.stderr  # the summary went to stdout, then nowhere
    assert (out / "catalog.sqlite").exists()

    write = _closed_pipe()
    try:
        result = _cli("export", str(out), stdout=write)  # `pipeline export OUT | head -1`
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_closed_stdout_keeps_the_exit_code_of_the_work(tmp_path: Path) -> None:
    """The reader's leaving stops nothing: a run above --max-failure-rate still exits 3."""
    manifest = tmp_path / "m.txt"
    manifest.write_text("http://127.0.0.1:9/a.jpg\n")  # port 9: refused at once
    write = _closed_pipe()
    try:
        result = _cli("run", str(manifest), "--out", str(tmp_path / "out"), "--allow-private", "--retries", "0",
                      "--max-failure-rate", "0", "--procs", "1", stdout=write)  # fmt: skip
    finally:
        os.close(write)
    assert result.returncode == 3, result.stderr
    assert "Error: 100.0% of rows failed" in result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
