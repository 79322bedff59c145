"""``pipeline.run()`` from a script: spawned workers re-import the caller's main module.

Without the ``if __name__ == "__main__":`` guard (or from ``python -``), every worker dies
while starting. That is a fault of the run, not of its rows: the call must stop with an
error that says what to do, and commit no row as ``internal``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def _manifest(tmp_path: Path) -> Path:
    folder = tmp_path / "samples"
    shutil.copytree(ROOT / "samples", folder)
    return folder / "manifest.csv"


def _python(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=100, env=env
    )


def _script(manifest: Path, out: Path, guarded: bool) -> str:
    call = f"summary = run({str(manifest)!r}, out={str(out)!r}, procs=2)\nprint('rows', summary.rows)\n"
    if guarded:
        call = 'if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in call.splitlines())
    return f"from pipeline import run\n{call}"


def _internal_rows(out: Path) -> int:
    catalog = out / "catalog.sqlite"
    if not catalog.exists():
        return 0
    with sqlite3.connect(catalog) as db:
        return db.execute("SELECT COUNT(*) FROM items WHERE error_class = 'internal'").fetchone()[0]


def _assert_refused(result: subprocess.CompletedProcess[str], out: Path) -> None:
    assert result.returncode != 0, result.stdout
    assert "rows" not in result.stdout  # run() raised instead of returning a summary
    error = [line for line in result.stderr.splitlines() if line.startswith("pipeline.errors.UsageError: ")]
    assert error[-1].startswith("pipeline.errors.UsageError: worker processes died while starting"), result.stderr
    assert 'if __name__ == "__main__":' in error[-1]
    assert _internal_rows(out) == 0


def test_unguarded_script_stops_with_a_clear_error(tmp_path: Path) -> None:
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    script = tmp_path / "script.py"
    script.write_text(_script(manifest, out, guarded=False))
    _assert_refused(_python([str(script)], tmp_path), out)


def test_script_from_stdin_stops_with_a_clear_error(tmp_path: Path) -> None:
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    result = _python(["-"], tmp_path, stdin=_script(manifest, out, guarded=False))
    _assert_refused(result, out)


def test_guarded_script_runs(tmp_path: Path) -> None:
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    script = tmp_path / "script.py"
    script.write_text(_script(manifest, out, guarded=True))
    result = _python([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "rows 37"
    assert _internal_rows(out) == 0


def test_code_without_a_main_file_runs(tmp_path: Path) -> None:
    """``python -c`` has no ``__main__.__file__``, as in Jupyter: workers import nothing of it."""
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    result = _python(["-c", _script(manifest, out, guarded=False)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "rows 37"


def test_run_then_export_from_the_package_after_the_cli_was_imported(tmp_path: Path) -> None:
    """``from pipeline import export`` is the function even once the modules behind the CLI
    are loaded (a module of the same name used to shadow it: ``'module' object is not callable``)."""
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    script = tmp_path / "script.py"
    script.write_text(
        "import pipeline.cli  # loads every module the commands use\n"
        "from pipeline import export, run\n"
        'if __name__ == "__main__":\n'
        f"    summary = run({str(manifest)!r}, out={str(out)!r}, procs=1)\n"
        f"    print('exported', export({str(out)!r}, {str(tmp_path / 'rows.csv')!r}, format='csv'))\n"
    )
    result = _python([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "exported 37"
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 38  # header + one line per row
