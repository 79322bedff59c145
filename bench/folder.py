"""Folder of photos: ``pipeline run FOLDER`` against libvips' ``vipsthumbnail``, same files, same cores.

``python -m bench.folder`` (see bench/README.md, "Folder of photos").

The corpus. Folders of 50, 240 and 2,000 camera-size JPEGs: half 12 MP (4000x3000), half
3 MP (2000x1500), one in five portrait, one in twenty stored landscape with an EXIF
Orientation tag (6 or 8) that makes it portrait. Pixels are real photographs with grain
(``bench/photos.py``), q85 4:2:0 as cameras write them. 40 distinct base photos are made
once; file ``i`` is base ``i % 40`` with a COM segment naming ``i`` (``unique_copy``), so
every file has its own bytes and SHA-256 at the cost of a copy, and the sorted file order
alternates 12 MP and 3 MP. The 40 bases are cached on disk (``--corpus-dir``); the
folders are made from them in seconds on tmpfs (``--folders-dir``, /dev/shm) and removed
at the end (``--keep-folders`` keeps them): this VM's host drops the page cache now and
then (``drop_caches`` in dmesg, once during a session), and tmpfs pages are not dropped.
A run that read more than ``--max-disk-read`` MB from the disks meanwhile
(/proc/diskstats: a cold interpreter, libraries or files) counts as disturbed and is run
again, as below.

The runners, one after another under ``flock --lock`` (other benchmarks on the machine
take the same lock, so timed runs never overlap), alternating within a session: rep 1 of
every runner, then rep 2..., the order rotated by one each rep so that no runner always
follows the same one. Outputs go to a fresh folder on /dev/shm (``--work-dir``), removed
after each run. Timed runs get nice -10 (``--nice``; both runners alike), each in a session
of its own whose autogroup gets the same nice (with autogroup scheduling, a process's nice
weighs only within its session), so that the untimed work of others on a shared machine
yields to them. The lock binds only the programs that take it, so with the lock held each
run also waits (up to ``--quiet-wait`` s) for a second in which the rest of the machine
uses at most ``--quiet-cores`` cores, and a run during which others took more (machine-wide
busy CPU from /proc/stat minus the tree's own, plus the hypervisor's steal) is run again,
up to ``--noisy-retries`` times; the quiet attempt is kept, else the least disturbed one,
flagged ``noisy``. Every result carries the others' cores, the steal and the disk reads
measured during it, and when it started.

- ``pipeline``: ``pipeline run FOLDER --procs N -o OUT -q`` with its defaults (256 px JPEG
  q85 thumbnail, SHA-256, dHash, pHash, originals kept), through the CLI of the code tree
  ``--tree`` (``PYTHONPATH=TREE``, so the spawned workers import that tree too; the run
  checks which files it imported). The headline row: it is what a user types.
- ``pipeline --no-keep-originals``: the same without copying the originals into OUT.
- ``vipsthumbnail``: the sorted file list cut into N contiguous parts of equal length (each
  gets the same mix of sizes, since the files alternate), one ``vipsthumbnail -s 256 -o
  OUT/%s.jpg[Q=85] files...`` per part, all started together; libvips' own thread pool at
  its default. It shrinks on load
  (JPEG DCT scaling), autorotates, computes no hash and keeps no original: it is the
  throughput anchor, not a like-for-like tool.

Measured per run, for the whole process tree (all N vipsthumbnail processes are one
group): wall time from the first spawn to the last exit; CPU-seconds from
``RUSAGE_CHILDREN`` (every descendant reaped); peak RSS, the tree's sum sampled every
50 ms; and a CPU utilisation timeline: every 50 ms the tree's cumulative CPU is read from
/proc (utime + stime + cutime + cstime, parents before children, so a child reaped
between two reads is missed for one sample, never counted twice; the series is kept
monotonic), a root's final figure comes from ``wait4``, and the series is cut into
``--bin`` second bins (cores busy = CPU-seconds in the bin / its length). ``busy_share``
is the fraction of the wall time spent in bins at >= 90% of ``--procs`` cores. A run
counts only if every photo came out (pipeline: ``ok`` rows in the catalog; vips: files).

Reported per folder size and runner: medians over ``--reps`` of wall time, photos/s
(photos / wall), CPU-seconds, CPU-ms per photo, peak RSS and busy share; the ratio of
pipeline's photos/s to vipsthumbnail's; and the timeline of the median run. Results:
``bench/results/folder-<UTC>.json``, rewritten after every run (``"complete": false``
until the end).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/folder.py` as well as `python -m bench.folder`
    sys.path.insert(0, str(ROOT))

from bench.measure import tree_pids, tree_rss

CORPUS_VERSION = 1  # bump when the corpus recipe changes: the cache is keyed by it
BASE_PHOTOS = 40
LARGE, SMALL = (4000, 3000), (2000, 1500)
EXIF_ROTATED = {17: 6, 30: 8}  # base index -> EXIF Orientation (6: turn 90 CW, 8: 90 CCW)
SIZES = (50, 240, 2000)
RUNNERS = ("pipeline", "pipeline-nokeep", "vips")
LABELS = {"pipeline": "pipeline", "pipeline-nokeep": "pipeline --no-keep-originals", "vips": "vipsthumbnail"}
SIDE = 256
BUSY = 0.9  # a bin counts as busy at >= 90% of --procs cores (the target)
SAMPLE_S = 0.05
SHM = Path("/dev/shm")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Base:
    index: int
    width: int  # of the stored raster (before any EXIF rotation)
    height: int
    orientation: int  # EXIF Orientation; 1 = none


def base_photos(n: int = BASE_PHOTOS) -> list[Base]:
    """Even bases 12 MP, odd 3 MP (so files alternate), every fifth portrait, two EXIF-rotated."""
    out = []
    for i in range(n):
        w, h = LARGE if i % 2 == 0 else SMALL
        if i % 5 == 3:
            w, h = h, w
        out.append(Base(i, w, h, EXIF_ROTATED.get(i, 1)))
    return out


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 EXIF segment holding only the Orientation tag, right after SOI."""
    if orientation == 1:
        return jpeg
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()  # b"Exif\0\0" + a TIFF header and one IFD
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def make_base(base: Base) -> bytes:
    from bench.photos import encode, photo

    # 1000 + index: seeds of their own, not the ones other benchmarks draw.
    return with_orientation(encode(photo(1000 + base.index, base.width, base.height), "jpeg"), base.orientation)


def file_name(i: int) -> str:
    return f"IMG_{i:04d}.jpg"


def _base_path(root: Path, base: Base) -> Path:
    return root / "bases" / f"{base.index:02d}-{base.width}x{base.height}-o{base.orientation}.jpg"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _ensure_bases(root: Path, procs: int) -> list[bytes]:
    bases = base_photos()
    missing = [b for b in bases if not _base_path(root, b).exists()]
    if missing:
        (root / "bases").mkdir(parents=True, exist_ok=True)
        print(f"corpus: making {len(missing)} base photos in {root / 'bases'} ...", flush=True)
        with ProcessPoolExecutor(procs) as pool:
            for base, data in zip(missing, pool.map(make_base, missing)):
                _write_atomic(_base_path(root, base), data)
    return [_base_path(root, b).read_bytes() for b in bases]


def ensure_folder(bases_root: Path, root: Path, size: int, procs: int) -> Path:
    """``root/photos-<size>``: ``size`` distinct files from the bases cached in ``bases_root``,
    made once (a marker file says it is whole)."""
    from bench.photos import unique_copy

    folder = root / f"photos-{size}"
    if (folder / ".complete").exists():
        return folder
    bases = _ensure_bases(bases_root, procs)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(size):
        (folder / file_name(i)).write_bytes(unique_copy(bases[i % len(bases)], i))
    (folder / ".complete").write_text(f"{CORPUS_VERSION}\n")
    return folder


def describe_folder(folder: Path) -> dict[str, object]:
    from PIL import Image

    files = photo_files(folder)
    counts = {"12mp": 0, "3mp": 0, "portrait": 0, "exif_rotated": 0}
    pixels = 0
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        pixels += w * h
        counts["12mp" if w * h >= 10e6 else "3mp"] += 1
        counts["exif_rotated"] += rotated
        counts["portrait"] += (w < h) != rotated  # as displayed
    size = sum(f.stat().st_size for f in files)
    return {"photos": len(files), **counts, "bytes": size, "mean_mp": round(pixels / len(files) / 1e6, 2),
            "mean_mb": round(size / len(files) / 1e6, 2), "bytes_per_pixel": round(size / pixels, 3)}  # fmt: skip


def photo_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def warm(files: Sequence[Path]) -> None:
    """Read every file once, so no runner pays for the disk (the corpus is on /tmp)."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


# -- runners -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    argv: tuple[str, ...]
    cwd: Path
    env: tuple[tuple[str, str], ...] = ()  # added to os.environ


PIPELINE_MAIN = "import sys; from cli import main; sys.exit(main())"


def pipeline_env(tree: Path) -> tuple[tuple[str, str], ...]:
    # Only the tree: an inherited PYTHONPATH could bring in another checkout's pipeline.
    return (("PYTHONPATH", str(tree)),)


def pipeline_launch(tree: Path, folder: Path, out: Path, procs: int, extra: Sequence[str]) -> Launch:
    argv = (sys.executable, "-c", PIPELINE_MAIN, "run", str(folder), "--procs", str(procs), "-o", str(out), "-q")
    return Launch(argv + tuple(extra), tree, pipeline_env(tree))


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Contiguous parts of (nearly) equal length, as `split -n` would cut the list. The
    corpus alternates 12 MP and 3 MP, so each part gets the same mix; round-robin would hand
    all the 12 MP files to one process at --procs 2 (measured: one vipsthumbnail ran alone
    for the second half of the run)."""
    n = len(files)
    cuts = [k * n // parts for k in range(parts + 1)]
    return [list(files[a:b]) for a, b in itertools.pairwise(cuts) if b > a]


def part_sizes_mb(files: Sequence[Path], parts: int) -> list[float]:
    """Bytes per vipsthumbnail process: how even the static split is."""
    return [round(sum(f.stat().st_size for f in part) / 1e6, 1) for part in split(files, parts)]


def vips_launches(files: Sequence[Path], out: Path, procs: int) -> list[Launch]:
    target = f"{out}/%s.jpg[Q=85]"
    return [Launch(("vipsthumbnail", "-s", str(SIDE), "-o", target, *map(str, part)), out)
            for part in split(files, procs)]  # fmt: skip


def launches(runner: str, tree: Path, folder: Path, files: Sequence[Path], out: Path, procs: int,
             extra: Sequence[str]) -> list[Launch]:  # fmt: skip
    if runner == "pipeline":
        return [pipeline_launch(tree, folder, out, procs, extra)]
    if runner == "pipeline-nokeep":
        return [pipeline_launch(tree, folder, out, procs, ("--no-keep-originals", *extra))]
    if runner == "vips":
        out.mkdir(parents=True, exist_ok=True)  # vipsthumbnail does not create it
        return vips_launches(files, out, procs)
    raise ValueError(f"unknown runner {runner!r}: use {', '.join(RUNNERS)}")


def photos_done(runner: str, out: Path) -> int:
    if runner.startswith("pipeline"):
        if not (out / "catalog.sqlite").exists():
            return 0
        db = sqlite3.connect(out / "catalog.sqlite")
        try:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0])
        finally:
            db.close()
    return sum(1 for _ in out.glob("*.jpg"))


# -- measuring a group of processes --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupRun:
    returncodes: tuple[int, ...]
    wall_s: float
    cpu_s: float  # RUSAGE_CHILDREN: every process of the tree, reaped
    others_cores: float  # mean cores busy outside the tree meanwhile (a shared machine's noise)
    steal_cores: float  # mean cores the hypervisor gave to other guests meanwhile
    disk_read_mb: float  # read from the disks meanwhile, by anyone
    peak_rss_mb: float
    samples: tuple[tuple[float, float], ...]  # (seconds since start, cumulative CPU-seconds of the tree)
    stderr: str


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime + cutime + cstime of ``pid`` (its reaped children included), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" of comm: field 3 (state) is fields[0], so utime (14) .. cstime (17) are [11:15].
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def system_cpu_s() -> tuple[float, float]:
    """Machine-wide (busy, steal) CPU-seconds since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK


def disk_read_mb() -> float:
    """MB read from the machine's whole disks since boot (partitions and loop/ram devices left out)."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            name = fields[2]
            if name.startswith(("loop", "ram")) or not Path(f"/sys/block/{name}").exists():
                continue
            total += int(fields[5])  # sectors read, 512 bytes each
    return total * 512 / 1e6


def tree_cpu_s(pid: int) -> float:
    # tree_pids lists parents first: a child reaped between the two reads is missed for this
    # sample (its parent's cutime was read before), never counted twice.
    return sum(c for p in tree_pids(pid) if (c := proc_cpu_s(p)) is not None)


class _Sampler:
    """Every ``SAMPLE_S``: the group's cumulative CPU and summed RSS, from /proc."""

    def __init__(self, pids: Sequence[int], started: float) -> None:
        self.pids, self.started = list(pids), started
        self.final: dict[int, float] = {}  # pid -> CPU-s from wait4, once reaped
        self.lock = threading.Lock()
        self.samples: list[tuple[float, float]] = []
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def reaped(self, pid: int, cpu_s: float) -> None:
        with self.lock:
            self.final[pid] = cpu_s

    def cpu_now(self) -> float:
        with self.lock:
            final = dict(self.final)
        return sum(final[p] if p in final else tree_cpu_s(p) for p in self.pids)

    def _loop(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            cpu = self.cpu_now()
            t = time.perf_counter() - self.started
            last = self.samples[-1][1] if self.samples else 0.0
            self.samples.append((t, max(cpu, last)))  # a reap race may dip one sample: keep it monotonic
            self.peak = max(self.peak, sum(tree_rss(p) for p in self.pids if p not in self.final))


def _child_setup(nice: int) -> Callable[[], None] | None:
    """preexec_fn of a timed child, which run_group starts in a session of its own: its nice
    value, and the same for its session's autogroup. With autogroup scheduling (on here), nice
    only weighs a process against its own session; the session's weight against the others'
    is /proc/self/autogroup's (measured: at nice -10 alone, other sessions still took 0.6-0.7
    of the 2 cores during long runs). Workers and threads inherit both."""
    if nice == 0:
        return None

    def setup() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))

    return setup


def nice_allowed(nice: int) -> bool:
    """Whether children may get this nice value (below 0 needs root or CAP_SYS_NICE)."""
    try:
        subprocess.run(["true"], preexec_fn=_child_setup(nice), start_new_session=True, check=True)
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def run_group(group: Sequence[Launch], timeout: float = 1800.0, nice: int = 0) -> GroupRun:
    """Start every launch at once, wait for all, measure the whole tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    system_before, disk_before = system_cpu_s(), disk_read_mb()
    with tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        procs = [subprocess.Popen(list(la.argv), cwd=la.cwd, env={**os.environ, **dict(la.env)},
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                  preexec_fn=_child_setup(nice))  # noqa: PLW1509
                 for la in group]  # fmt: skip
        sampler = _Sampler([p.pid for p in procs], started)
        sampler.thread.start()
        codes = []
        killer = threading.Timer(timeout, lambda: [p.kill() for p in procs])
        killer.start()
        for p in procs:
            # wait4 ourselves rather than Popen.wait: it gives this child's own CPU total
            # (with its reaped descendants) for the timeline's last sample.
            _, status, usage = os.wait4(p.pid, 0)
            sampler.reaped(p.pid, usage.ru_utime + usage.ru_stime)
            p.returncode = os.waitstatus_to_exitcode(status)
            codes.append(p.returncode)
        wall = time.perf_counter() - started
        killer.cancel()
        sampler.stop.set()
        sampler.thread.join()
        err.seek(0)
        stderr = err.read()[-2000:]
    system_after, disk_after = system_cpu_s(), disk_read_mb()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = max(0.0, system_after[0] - system_before[0] - cpu) / wall
    steal = (system_after[1] - system_before[1]) / wall
    samples = [s for s in sampler.samples if s[0] < wall] + [(wall, sampler.cpu_now())]
    return GroupRun(tuple(codes), wall, cpu, others, steal, disk_after - disk_before, sampler.peak / 1e6,
                    tuple(samples), stderr)


# -- the timeline --------------------------------------------------------------------------


def _cpu_at(samples: Sequence[tuple[float, float]], t: float) -> float:
    """Cumulative CPU at time ``t``, linear between samples; 0 at the start."""
    prev_t, prev_c = 0.0, 0.0
    for st, sc in samples:
        if st >= t:
            return prev_c if st == prev_t else prev_c + (sc - prev_c) * (t - prev_t) / (st - prev_t)
        prev_t, prev_c = st, sc
    return prev_c


def bin_edges(wall_s: float, bin_s: float) -> list[float]:
    """0, bin_s, 2 bin_s ... wall_s. A remainder shorter than half a bin joins the last bin:
    a 20 ms bin would turn one sample's jitter into a spike of several cores."""
    edges = [k * bin_s for k in range(int(wall_s / bin_s) + 1)]
    if len(edges) > 1 and wall_s - edges[-1] < bin_s / 2:
        edges.pop()
    return edges + [wall_s] if wall_s > edges[-1] else edges


def timeline(samples: Sequence[tuple[float, float]], wall_s: float, bin_s: float) -> list[float]:
    """Cores busy in each bin from 0 to ``wall_s`` (see ``bin_edges``)."""
    edges = bin_edges(wall_s, bin_s)
    return [round((_cpu_at(samples, b) - _cpu_at(samples, a)) / (b - a), 2) for a, b in itertools.pairwise(edges)]


def busy_share(cores: Sequence[float], wall_s: float, bin_s: float, procs: int) -> float:
    """Fraction of the wall time spent in bins with >= BUSY x ``procs`` cores busy."""
    if wall_s <= 0:
        return 0.0
    spans = [b - a for a, b in itertools.pairwise(bin_edges(wall_s, bin_s))]
    busy = sum(span for c, span in zip(cores, spans, strict=True) if c >= BUSY * procs)
    return round(busy / wall_s, 3)


# -- one measurement -----------------------------------------------------------------------


@contextlib.contextmanager
def bench_lock(path: Path | None) -> Iterator[float]:
    """The machine-wide benchmark lock (flock(2), as flock(1) takes it); yields the seconds waited."""
    if path is None:
        yield 0.0
        return
    with open(path, "a") as f:
        asked = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - asked
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class Result:
    size: int
    runner: str
    rep: int
    ok: bool
    photos_done: int
    wall_s: float
    photos_per_s: float
    cpu_s: float
    cpu_ms_per_photo: float
    peak_rss_mb: float
    busy_share: float
    mean_cores: float
    others_cores: float
    steal_cores: float
    disk_read_mb: float
    timeline: tuple[float, ...]
    error: str = ""
    started_utc: str = ""  # when the timed run began, to match against dmesg, other jobs...
    lock_wait_s: float = 0.0
    quiet_wait_s: float = 0.0
    others_cores_before: float = 0.0  # in the second just before the start
    attempts: int = 1
    noisy: bool = False  # disturbed in every attempt (see ``disturbed``): the least disturbed one is kept
    discarded: tuple[tuple[float, float, float], ...] = ()  # (wall_s, others + steal cores, disk MB) run again


def wait_quiet(max_cores: float, max_wait_s: float, window_s: float = 1.0) -> tuple[float, float]:
    """Wait until the machine's busy CPU over one window is at most ``max_cores`` (nothing of
    ours runs now, so it is all others' work), for at most ``max_wait_s``.
    Returns (seconds waited, cores busy in the last window)."""
    started = time.perf_counter()
    while True:
        before = system_cpu_s()[0]
        time.sleep(window_s)
        level = (system_cpu_s()[0] - before) / window_s
        waited = time.perf_counter() - started
        if level <= max_cores or waited >= max_wait_s:
            return waited, level


def attempt(runner: str, size: int, rep: int, files: Sequence[Path], folder: Path, out: Path,
            args: argparse.Namespace) -> Result:  # fmt: skip
    """One timed run (the caller holds the lock)."""
    shutil.rmtree(out, ignore_errors=True)
    group = launches(runner, args.tree, folder, files, out, args.procs, args.pipeline_args.split())
    run = run_group(group, nice=args.nice)
    done = photos_done(runner, out) if all(c == 0 for c in run.returncodes) else 0
    shutil.rmtree(out, ignore_errors=True)  # inside the lock: 3 GB of tmpfs to free is work too
    cores = timeline(run.samples, run.wall_s, args.bin)
    ok = done == size
    error = "" if ok else f"exit {run.returncodes}, {done}/{size} photos; {run.stderr.strip()[-600:]}"
    return Result(
        size, runner, rep, ok, done, round(run.wall_s, 3), round(size / run.wall_s, 2), round(run.cpu_s, 2),
        round(run.cpu_s / size * 1000, 1), round(run.peak_rss_mb, 1), busy_share(cores, run.wall_s, args.bin, args.procs),
        round(run.cpu_s / run.wall_s, 2), round(run.others_cores, 2), round(run.steal_cores, 2),
        round(run.disk_read_mb, 1), tuple(cores), error,
    )  # fmt: skip


def disturbance(r: Result) -> float:
    """Cores taken from the run's machine meanwhile: other processes, and other guests (steal)."""
    return r.others_cores + r.steal_cores


def disturbed(r: Result, args: argparse.Namespace) -> bool:
    if args.quiet_cores is None:
        return False
    return disturbance(r) > args.quiet_cores or r.disk_read_mb > args.max_disk_read


def measure(runner: str, size: int, rep: int, files: Sequence[Path], folder: Path, out: Path,
            args: argparse.Namespace) -> Result:  # fmt: skip
    """Under the lock: wait for a quiet machine, run; run again (up to --noisy-retries times)
    when other work took more than --quiet-cores meanwhile, since the lock binds only the
    benchmarks that take it (steal counts too: other guests of the hypervisor). Keeps the
    quiet attempt, else the least noisy one."""
    tries: list[Result] = []
    with bench_lock(args.lock) as waited:
        for _ in range(1 + args.noisy_retries):
            quiet_wait, before = wait_quiet(args.quiet_cores, args.quiet_wait) if args.quiet_cores is not None else (0.0, 0.0)
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            r = attempt(runner, size, rep, files, folder, out, args)
            tries.append(replace(r, started_utc=when, lock_wait_s=round(waited, 1), quiet_wait_s=round(quiet_wait, 1),
                                 others_cores_before=round(before, 2)))  # fmt: skip
            if not r.ok or not disturbed(r, args):
                break
    best = min(tries, key=lambda r: (not r.ok, disturbed(r, args), disturbance(r)))
    discarded = tuple((r.wall_s, round(disturbance(r), 2), r.disk_read_mb) for r in tries if r is not best)
    return replace(best, attempts=len(tries), noisy=disturbed(best, args), discarded=discarded)


def fmt_timeline(cores: Sequence[float]) -> str:
    return " ".join(f"{c:.1f}" for c in cores)


def print_result(r: Result, bin_s: float) -> None:
    print(f"  {r.size:>5} {LABELS[r.runner]:<29} {r.wall_s:>7.2f} s {r.photos_per_s:>7.1f} photos/s  "
          f"cpu {r.cpu_s:>6.1f} s ({r.cpu_ms_per_photo:.0f} ms/photo)  rss {r.peak_rss_mb:>5.0f} MB  "
          f">=90%: {r.busy_share:.0%}  others {r.others_cores:.2f} cores, steal {r.steal_cores:.2f}"
          + (f", disk {r.disk_read_mb:.0f} MB" if r.disk_read_mb >= 1 else "")
          + (f"  waited {r.lock_wait_s} s for the lock" if r.lock_wait_s >= 1 else "")
          + (f", {r.quiet_wait_s} s for quiet" if r.quiet_wait_s >= 2 else "")
          + (f"  attempts {r.attempts}, discarded (wall s, others' + steal cores, disk MB): {r.discarded}" if r.discarded else "")
          + ("  NOISY" if r.noisy else ""), flush=True)  # fmt: skip
    print(f"        cores busy per {bin_s} s: {fmt_timeline(r.timeline)}", flush=True)
    if r.error:
        print(f"        FAILED: {r.error}", flush=True)


# -- the summary ---------------------------------------------------------------------------


def median_run(runs: Sequence[Result]) -> Result:
    """The run whose wall time is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


def summarise(results: Sequence[Result]) -> list[dict[str, object]]:
    groups: dict[tuple[int, str], list[Result]] = {}
    for r in results:
        if r.ok:
            groups.setdefault((r.size, r.runner), []).append(r)
    rows = []
    for (size, runner), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], RUNNERS.index(kv[0][1]))):
        med = median_run(runs)
        rows.append({
            "size": size, "runner": runner, "label": LABELS[runner], "runs": len(runs),
            "wall_s": round(statistics.median(r.wall_s for r in runs), 2),
            "walls_s": [r.wall_s for r in runs],
            "photos_per_s": round(size / statistics.median(r.wall_s for r in runs), 1),
            "cpu_s": round(statistics.median(r.cpu_s for r in runs), 1),
            "cpu_ms_per_photo": round(statistics.median(r.cpu_ms_per_photo for r in runs), 1),
            "peak_rss_mb": round(statistics.median(r.peak_rss_mb for r in runs)),
            "busy_share": round(statistics.median(r.busy_share for r in runs), 3),
            "mean_cores": round(statistics.median(r.mean_cores for r in runs), 2),
            "others_cores": round(statistics.median(r.others_cores for r in runs), 2),
            "noisy_runs": sum(r.noisy for r in runs),
            "timeline_rep": med.rep, "timeline": list(med.timeline),
        })  # fmt: skip
    for row in rows:
        vips = next((x for x in rows if x["size"] == row["size"] and x["runner"] == "vips"), None)
        row["x_vips_throughput"] = round(row["photos_per_s"] / vips["photos_per_s"], 2) if vips else None
        row["x_vips_cpu_per_photo"] = round(row["cpu_ms_per_photo"] / vips["cpu_ms_per_photo"], 2) if vips else None
    return rows


def table(rows: Sequence[dict[str, object]], procs: int) -> str:
    lines = [
        (f"| photos | runner | wall s | photos/s | × vips photos/s | CPU-s | CPU-ms / photo | × vips CPU / photo "
         f"| peak RSS | time at ≥ 90% of {procs} cores | mean cores busy | others' cores |"),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['label']} | {r['wall_s']} | {r['photos_per_s']} | {r['x_vips_throughput']} "
            f"| {r['cpu_s']} | {r['cpu_ms_per_photo']} | {r['x_vips_cpu_per_photo']} | {r['peak_rss_mb']} MB "
            f"| {float(r['busy_share']):.0%} | {r['mean_cores']} | {r['others_cores']} |"
        )  # fmt: skip
    return "\n".join(lines)


# -- the session ---------------------------------------------------------------------------


def tree_identity(tree: Path) -> dict[str, str]:
    """Which files `pipeline` and `cli` come from under the tree's environment, and its commit."""
    probe = "import cli, pipeline; print(cli.__file__); print(pipeline.__file__); print(pipeline.__version__)"
    got = subprocess.run([sys.executable, "-c", probe], cwd=tree, env={**os.environ, **dict(pipeline_env(tree))},
                         capture_output=True, text=True, check=True).stdout.split("\n")  # fmt: skip
    for path in got[:2]:
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"--tree {tree}: the CLI would import {path}, not this tree")
    git = subprocess.run(["git", "log", "-1", "--format=%h %s"], check=False, cwd=tree, capture_output=True, text=True)
    # Only the code that runs: edits to the README or the bench do not change what is measured.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "pipeline", "cli.py"],
                           check=False, cwd=tree, capture_output=True, text=True).stdout.strip()  # fmt: skip
    return {"tree": str(tree), "cli": got[0], "pipeline": got[1], "version": got[2],
            "commit": git.stdout.strip() or "?", "dirty": "yes" if dirty else "no"}  # fmt: skip


def vips_version() -> str:
    try:
        return subprocess.run(["vipsthumbnail", "--version"], check=False, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        raise SystemExit("vipsthumbnail not found: apt-get install -y --no-install-recommends libvips-tools") from None


def rotated(items: Sequence[str], k: int) -> list[str]:
    k %= max(1, len(items))
    return list(items[k:]) + list(items[:k])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.folder", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="folder sizes, photos [%(default)s]")
    p.add_argument("--reps", type=int, default=3, help="repetitions of every runner [%(default)s]")
    p.add_argument("--procs", type=int, default=2, help="pipeline --procs and vipsthumbnail processes [%(default)s]")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"some of {','.join(RUNNERS)} [all]")
    p.add_argument("--tree", type=Path, default=ROOT, help="code tree whose CLI runs [this repository]")
    p.add_argument("--pipeline-args", default="", help="extra options for every `pipeline run` (experiments)")
    p.add_argument("--bin", type=float, default=0.5, help="timeline bin, seconds [%(default)s]")
    p.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "pipeline-folder-corpus",
                   help="where the 40 base photos are made once and kept [%(default)s]")
    p.add_argument("--folders-dir", type=Path, default=SHM / "pipeline-folder-corpus" if SHM.is_dir() else None,
                   help="where the folders are made, tmpfs so no page-cache drop reaches them [/dev/shm/...]")
    p.add_argument("--keep-folders", action="store_true", help="leave the folders (3.5 GB of tmpfs) at the end")
    p.add_argument("--max-disk-read", type=float, default=20.0,
                   help="MB read from disk during a run before it counts as disturbed [%(default)s]")  # fmt: skip
    p.add_argument("--work-dir", type=Path, default=SHM if SHM.is_dir() else None,
                   help="where outputs go, one fresh folder per run [/dev/shm]")  # fmt: skip
    p.add_argument("--lock", type=Path, default=Path("/tmp/bench.lock"),
                   help="flock taken around every timed run [%(default)s]")  # fmt: skip
    p.add_argument("--no-lock", action="store_const", const=None, dest="lock", help="take no lock")
    p.add_argument("--quiet-cores", type=float, default=0.25,
                   help="others' CPU + steal (cores) allowed before and during a run; noisier runs are run again [%(default)s]")
    p.add_argument("--no-quiet", action="store_const", const=None, dest="quiet_cores",
                   help="neither wait for a quiet machine nor run noisy runs again")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="longest wait for a quiet machine, s [%(default)s]")
    p.add_argument("--nice", type=int, default=-10,
                   help="nice value of the timed runs (both runners alike): others' work yields to them [%(default)s]")
    p.add_argument("--noisy-retries", type=int, default=2, help="extra attempts of a noisy run [%(default)s]")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.runners = [r for r in args.runners.split(",") if r]
    unknown = set(args.runners) - set(RUNNERS)
    if unknown:
        p.error(f"unknown runners {sorted(unknown)}: use {','.join(RUNNERS)}")
    args.tree = args.tree.resolve()
    if args.nice and not nice_allowed(args.nice):
        print(f"--nice {args.nice} is not allowed here (needs root or CAP_SYS_NICE): timed runs at 0", flush=True)
        args.nice = 0
    return args


def machine() -> dict[str, object]:
    from bench.run import machine as base_machine

    return base_machine() | {"vipsthumbnail": vips_version(), "vips_concurrency": os.environ.get("VIPS_CONCURRENCY")}


def save(path: Path, report: dict[str, object], results: Sequence[Result], started: float, *,
         complete: bool) -> list[dict[str, object]]:  # fmt: skip
    """Write the results file (atomically); returns the summary rows."""
    rows = summarise(results)
    body = report | {"complete": complete, "results": [asdict(r) for r in results], "summary": rows,
                     "elapsed_s": round(time.time() - started, 1)}  # fmt: skip
    _write_atomic(path, (json.dumps(body, indent=1) + "\n").encode())
    return rows


def measure_all(args: argparse.Namespace, report: dict[str, object], folders_root: Path,
                started: float) -> tuple[list[Result], list[dict[str, object]], Path]:  # fmt: skip
    # Making the corpus is a minute of both cores the first time: hold the lock so no one's timed run sees it.
    with bench_lock(args.lock):
        bases_root = args.corpus_dir / f"v{CORPUS_VERSION}"
        folders = {n: ensure_folder(bases_root, folders_root, n, args.procs) for n in args.sizes}
    files = {n: photo_files(f) for n, f in folders.items()}
    report["corpus"] = {
        str(n): describe_folder(f) | {"path": str(f), "vips_parts_mb": part_sizes_mb(files[n], args.procs)}
        for n, f in folders.items()
    }
    print(f"corpus: {json.dumps(report['corpus'])}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / time.strftime("folder-%Y%m%dT%H%M%SZ.json", time.gmtime(started))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pipeline-folder-", dir=args.work_dir) as tmp:
        out = Path(tmp) / "out"
        for rep in range(args.reps):
            for size in args.sizes:
                print(f"rep {rep + 1}/{args.reps}, {size} photos", flush=True)
                warm(files[size])
                for runner in rotated(args.runners, rep):
                    result = measure(runner, size, rep, files[size], folders[size], out, args)
                    print_result(result, args.bin)
                    results.append(result)
                    # After every run: a session killed from outside (it happened) keeps what it measured.
                    save(path, report, results, started, complete=False)
    return results, save(path, report, results, started, complete=True), path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    report: dict[str, object] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "argv": list(sys.argv[1:]),
        "machine": machine(), "tree": tree_identity(args.tree), "procs": args.procs, "bin_s": args.bin,
        "nice": args.nice, "quiet_cores": args.quiet_cores, "quiet_wait_s": args.quiet_wait,
        "noisy_retries": args.noisy_retries, "max_disk_read_mb": args.max_disk_read,
    }  # fmt: skip
    print(f"tree: {report['tree']}", flush=True)
    folders_root = (args.folders_dir or args.corpus_dir) / f"v{CORPUS_VERSION}"
    try:
        results, rows, path = measure_all(args, report, folders_root, started)
    finally:
        if not args.keep_folders and args.folders_dir is not None:
            shutil.rmtree(folders_root, ignore_errors=True)  # 3.5 GB of someone's RAM otherwise
            with contextlib.suppress(OSError):
                folders_root.parent.rmdir()  # only if empty
    print()
    print(table(rows, args.procs))
    print(f"\ncores busy per {args.bin} s, median run of each:")
    for r in rows:
        print(f"  {r['size']:>5} {r['label']:<29} {fmt_timeline(r['timeline'])}")  # type: ignore[arg-type]
    print(f"\nresults: {path}  ({round(time.time() - started, 1)} s)")
    if any(not r.ok for r in results):
        sys.exit(1)  # a run failed: its error is in the results file


if __name__ == "__main__":
    main()
