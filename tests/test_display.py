"""What `pipeline run` shows while it runs: rich's bar on a terminal (the real CLI under a
pseudo-terminal), the plain progress line when stderr is not a terminal, nothing with -q."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import jpeg

from cli import main
from pipeline.display import plain_line
from pipeline.runner import Progress

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ROWS = 6
# The line pipeline run has always printed to logs: [bar] share ETA (once the total is known), then counts.
PLAIN = re.compile(
    r"(\[[#.]{24}\] +\d+%  ETA (\?|\d+:\d\d:\d\d)  )?"
    r"\d[\d,]* rows  \d[\d,]* rows/s  \d[\d,.]* MB/s  ok \d[\d,]*  failed \d[\d,]*  shards \d[\d,]*"
)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(ROWS - 1):
        (folder / f"p{seed}.jpg").write_bytes(jpeg(160, 120, seed=seed))
    (folder / "broken.jpg").write_bytes(b"not a picture")  # one row not ok
    return folder


def _in_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """The real CLI with stdin, stdout and stderr on a pseudo-terminal 160 columns wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE")}
    env |= {"TERM": "xterm-256color", "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env,
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_the_rich_bar(tmp_path: Path, photos: Path) -> None:
    code, screen = _in_terminal(["run", str(photos), "--out", str(tmp_path / "out"), "--procs", "1"], tmp_path)
    text = ANSI.sub("", screen)
    assert code == 0, text
    assert "━" in text  # rich's bar
    last = [line for line in text.replace("\r", "\n").splitlines() if "rows/s  " in line][-1]
    assert re.search(
        rf"100% ETA 0:00:00 {ROWS} rows  \d[\d,]* rows/s  \d[\d,.]* MB/s  ok {ROWS - 1}  not ok 1  shards 1", last
    ), last
    assert PLAIN.search(text) is None  # not the log line
    assert f"Done: {ROWS} rows in" in text


def test_quiet_prints_nothing_even_on_a_terminal(tmp_path: Path, photos: Path) -> None:
    code, screen = _in_terminal(["run", str(photos), "--out", str(tmp_path / "out"), "--procs", "1", "-q"], tmp_path)
    assert (code, screen) == (0, "")


def test_logs_get_the_plain_line(tmp_path: Path, photos: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(photos), "--out", str(tmp_path / "out"), "--procs", "1"])
    assert result.exit_code == 0, result.output
    progress = [line for line in result.output.splitlines() if "rows/s  " in line]
    assert len(progress) == 1 and PLAIN.fullmatch(progress[0]), progress  # one line per 10 s
    assert "━" not in result.output and "\x1b" not in result.output


def test_the_plain_line_reads_as_before() -> None:
    counts = Counter(ok=999_990, failed=7, invalid=3)
    p = Progress(rows=1_000_000, by_status=counts, bytes=2_000_000_000, shards_done=2)
    p.started = time.monotonic() - 2000.0  # long enough that the test's own time cannot show
    assert plain_line(p) == "1,000,000 rows  500 rows/s  1.0 MB/s  ok 999,990  failed 10  shards 2"
    p.rows_before, p.rows_total = 1_000_000, 4_000_000
    assert plain_line(p) == (
        "[############............]  50%  ETA 1:06:40  "
        "1,000,000 rows  500 rows/s  1.0 MB/s  ok 999,990  failed 10  shards 2"
    )
