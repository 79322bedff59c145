"""bench/folder.py's bookkeeping: the corpus recipe, the split, the CPU timeline, one small run.

No timing is asserted: only that the accounting adds up and the runs do what they say.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from bench import folder as bf

ROOT = Path(__file__).resolve().parent.parent


def _jpeg(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 40)).save(out, "JPEG", quality=85)
    return out.getvalue()


def test_base_photos_mix_sizes_portraits_and_exif() -> None:
    bases = bf.base_photos()
    assert len(bases) == 40
    assert sum(b.width * b.height == 12_000_000 for b in bases) == 20
    assert sum(b.width * b.height == 3_000_000 for b in bases) == 20
    # Sorted files alternate 12 MP and 3 MP, so any prefix (a smaller folder) is half and half.
    assert all((b.width * b.height == 12_000_000) == (b.index % 2 == 0) for b in bases)
    assert 0 < sum(b.height > b.width for b in bases) < 20
    assert {b.orientation for b in bases} == {1, 6, 8}


def test_with_orientation_is_read_back_and_rotates() -> None:
    data = bf.with_orientation(_jpeg(40, 30), 6)
    im = Image.open(io.BytesIO(data))
    assert im.getexif()[0x0112] == 6
    assert ImageOps.exif_transpose(im).size == (30, 40)
    assert bf.with_orientation(b"\xff\xd8rest", 1) == b"\xff\xd8rest"


def test_split_contiguous_parts_cover_every_file_once_with_the_same_mix() -> None:
    files = [Path(bf.file_name(i)) for i in range(11)]
    parts = bf.split(files, 2)
    assert [len(p) for p in parts] == [5, 6]
    assert [f for part in parts for f in part] == files
    # Files alternate 12 MP (even) and 3 MP (odd): every part must get both, evenly.
    big = [sum(int(f.stem[-4:]) % 2 == 0 for f in part) for part in parts]
    assert big == [3, 3]
    assert bf.split(files[:1], 2) == [[Path("IMG_0000.jpg")]]  # no empty part: vipsthumbnail with no file


def test_vips_launches_one_process_per_part(tmp_path: Path) -> None:
    files = [tmp_path / bf.file_name(i) for i in range(5)]
    group = bf.vips_launches(files, tmp_path / "out", 2)
    assert len(group) == 2
    assert group[0].argv[:5] == ("vipsthumbnail", "-s", "256", "-o", f"{tmp_path / 'out'}/%s.jpg[Q=85]")
    assert group[0].argv[5:] == tuple(str(f) for f in files[:2])
    assert group[1].argv[5:] == tuple(str(f) for f in files[2:])


def test_pipeline_launch_runs_the_trees_cli(tmp_path: Path) -> None:
    la = bf.pipeline_launch(tmp_path, tmp_path / "photos", tmp_path / "out", 2, ("--no-keep-originals",))
    assert la.cwd == tmp_path and dict(la.env) == {"PYTHONPATH": str(tmp_path)}
    assert la.argv[1:3] == ("-c", bf.PIPELINE_MAIN)
    assert la.argv[3:] == ("run", str(tmp_path / "photos"), "--procs", "2", "-o", str(tmp_path / "out"), "-q",
                           "--no-keep-originals")  # fmt: skip


def test_timeline_bins_and_busy_share() -> None:
    # Two cores busy for 1.2 s, sampled every 0.1 s; then nothing until 1.5 s.
    samples = [(k / 10, min(k / 10, 1.2) * 2) for k in range(1, 16)]
    cores = bf.timeline(samples, 1.5, 0.5)
    assert cores == [2.0, 2.0, 0.8]
    assert bf.busy_share(cores, 1.5, 0.5, 2) == pytest.approx(1.0 / 1.5, abs=1e-3)
    # A last, shorter bin is normalised by its own length; under half a bin, it joins the one before.
    assert bf.timeline([(0.25, 0.5), (0.75, 1.5)], 0.75, 0.5) == [2.0, 2.0]
    assert bf.bin_edges(0.75, 0.5) == [0.0, 0.5, 0.75]
    assert bf.bin_edges(1.1, 0.5) == [0.0, 0.5, 1.1]
    assert bf.bin_edges(1.0, 0.5) == [0.0, 0.5, 1.0]
    assert bf.bin_edges(0.1, 0.5) == [0.0, 0.1]


def test_cpu_at_interpolates_from_zero() -> None:
    samples = [(1.0, 2.0), (2.0, 2.0)]
    assert bf._cpu_at(samples, 0.5) == pytest.approx(1.0)
    assert bf._cpu_at(samples, 1.5) == pytest.approx(2.0)
    assert bf._cpu_at(samples, 9.0) == pytest.approx(2.0)


BURN = "import time\nwhile time.process_time() < 0.3: pass\n"


def test_run_group_counts_every_process_and_grandchildren(tmp_path: Path) -> None:
    # One direct child that burns, one that runs a burning grandchild and waits for it.
    nested = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}], check=True)"
    group = [bf.Launch((sys.executable, "-c", BURN), tmp_path), bf.Launch((sys.executable, "-c", nested), tmp_path)]
    run = bf.run_group(group)
    assert run.returncodes == (0, 0)
    assert run.cpu_s >= 0.6
    times = [t for t, _ in run.samples]
    cpus = [c for _, c in run.samples]
    assert times == sorted(times) and cpus == sorted(cpus)
    # The timeline's last point (from wait4) and RUSAGE_CHILDREN agree: nothing lost.
    assert cpus[-1] == pytest.approx(run.cpu_s, abs=0.05)
    cores = bf.timeline(run.samples, run.wall_s, 0.1)
    spans = [b - a for a, b in itertools.pairwise(bf.bin_edges(run.wall_s, 0.1))]
    assert sum(c * s for c, s in zip(cores, spans, strict=True)) == pytest.approx(run.cpu_s, abs=0.05)


def test_bench_lock_is_exclusive(tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "bench.lock"
    with bf.bench_lock(lock), open(lock) as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(lock=None, tree=ROOT, procs=2, pipeline_args="", bin=0.5, quiet_cores=None, nice=0,
                              quiet_wait=0.0, noisy_retries=0, max_disk_read=20.0)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["pipeline", "vips"])
def test_measure_one_small_folder(tmp_path: Path, runner: str) -> None:
    if runner == "vips" and shutil.which("vipsthumbnail") is None:
        pytest.skip("vipsthumbnail not installed (apt-get install libvips-tools)")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / bf.file_name(i)).write_bytes(_jpeg(640 if i % 2 else 480, 480 if i % 2 else 640))
    files = bf.photo_files(photos)
    started = time.perf_counter()
    result = bf.measure(runner, 4, 0, files, photos, tmp_path / "out", _args(tmp_path))
    assert result.ok, result.error
    assert result.photos_done == 4
    assert 0 < result.wall_s <= time.perf_counter() - started
    assert result.cpu_s > 0 and result.peak_rss_mb > 0
    assert len(result.timeline) == len(bf.bin_edges(result.wall_s, 0.5)) - 1
    assert not (tmp_path / "out").exists()  # removed after the run
    assert result.attempts == 1 and not result.noisy


def test_tree_identity_refuses_a_tree_that_would_import_another_pipeline(tmp_path: Path) -> None:
    (tmp_path / "cli.py").write_text("")  # a tree with a cli.py but no pipeline package of its own
    with pytest.raises(SystemExit):
        bf.tree_identity(tmp_path)
    assert bf.tree_identity(ROOT)["cli"].startswith(str(ROOT))


def test_wait_quiet_returns_the_level_it_saw() -> None:
    waited, level = bf.wait_quiet(max_cores=1e6, max_wait_s=10.0, window_s=0.05)
    assert waited >= 0.05 and level >= 0.0


def test_timed_children_get_the_nice_value_in_their_own_session(tmp_path: Path) -> None:
    if not bf.nice_allowed(-5):
        pytest.skip("negative nice needs root or CAP_SYS_NICE")
    probe = "import os; print(os.getpriority(os.PRIO_PROCESS, 0), os.getsid(0))"
    out = tmp_path / "probe.txt"
    run = bf.run_group([bf.Launch(("sh", "-c", f"{sys.executable} -c '{probe}' > {out}"), tmp_path)], nice=-5)
    assert run.returncodes == (0,)
    nice, session = out.read_text().split()
    assert nice == "-5" and int(session) != os.getsid(0)  # inherited from sh, which leads a new session


def test_ensure_folder_makes_distinct_files_from_the_cached_bases(tmp_path: Path) -> None:
    bases_root = tmp_path / "bases-root"
    (bases_root / "bases").mkdir(parents=True)
    for base in bf.base_photos():  # stand-ins, so no photograph is made (no scikit-image needed)
        bf._base_path(bases_root, base).write_bytes(_jpeg(8, 6))
    folder = bf.ensure_folder(bases_root, tmp_path / "folders", 45, 1)
    files = bf.photo_files(folder)
    assert [f.name for f in files] == [bf.file_name(i) for i in range(45)]
    assert len({f.read_bytes() for f in files}) == 45
    assert all(Image.open(f).size == (8, 6) for f in files[:3])
    files[0].unlink()
    assert bf.ensure_folder(bases_root, tmp_path / "folders", 45, 1) == folder  # marked whole: not redone


def _result(**changes: object) -> bf.Result:
    base = bf.Result(240, "vips", 0, True, 240, 6.0, 40.0, 11.0, 45.8, 100.0, 0.9, 1.8, 0.0, 0.0, 0.0, ())
    return replace(base, **changes)  # type: ignore[arg-type]


def test_disturbed_counts_others_steal_and_disk_reads() -> None:
    args = argparse.Namespace(quiet_cores=0.25, max_disk_read=20.0)
    assert not bf.disturbed(_result(others_cores=0.1, steal_cores=0.1, disk_read_mb=5.0), args)
    assert bf.disturbed(_result(others_cores=0.2, steal_cores=0.1), args)
    assert bf.disturbed(_result(disk_read_mb=300.0), args)
    assert not bf.disturbed(_result(others_cores=2.0), argparse.Namespace(quiet_cores=None, max_disk_read=20.0))
