"""Outputs on an object store: ``python -m bench.s3`` (see bench/README.md, "Object-store outputs").

**The store.** moto's S3 server (``moto[server]``, the test extra) on 127.0.0.1, in this
process: werkzeug's threaded WSGI server around moto's app, behind a middleware that waits
``--latency-ms`` (20) before handing each request to moto, in the request's own thread, so
waits overlap as they would on a real network; a client that sends requests one after the
other pays the latency each time, one that keeps several in flight does not. The same
server (``MotoServer``) serves tests/test_remote_store.py, whose hooks hold requests to
watch what a run does meanwhile.

**The input.** ``--images`` (2,000) distinct JPEGs in a folder on /dev/shm: the photo-like
pool of the main bench (``bench/images.py``: 32 pictures, 640x480 to 4000x3000, mean
1.3 MP, q85, ~260 KB), file ``i`` is picture ``i % 32`` with a COM segment naming ``i``, so
every file has its own SHA-256 and so its own objects. Removed at the end.

**The runs.** ``pipeline run FOLDER --procs 2 -q`` with pipeline's defaults (256 px JPEG
thumbnail, hashes, originals kept: two objects per image), from the CLI of ``--tree``
(``PYTHONPATH=TREE``, so its workers import that tree), to ``--out /dev/shm/…`` (local) or
``--out s3://bench/run --catalog /dev/shm/…`` (s3), alternating, the order swapped every
repetition, each under ``flock /tmp/bench.lock`` (``--lock``) so no other benchmark
overlaps a timed run. The store is emptied (moto's reset) and the local outputs removed
between runs. A run counts only if every image ended ``ok`` in its catalog and, for s3, the
bucket holds exactly the objects the catalog names. images/s = images / wall time of the
whole command, start-up included. Reported: each run (with the CPU per image of its process
tree and of this process, i.e. moto, meanwhile, and the requests the store saw), the
medians, and the ratio local/s3 of the medians. Results: ``bench/results/s3-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
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
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"
SHM = Path("/dev/shm")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# What a client of the local server must not inherit: another profile or session, or a proxy
# that would take its requests off the loopback.
FOREIGN_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


class MotoServer:
    """moto's S3 (and every other moto service) on ``127.0.0.1:<free port>``, in threads.

    ``latency_s`` is waited before moto sees each request. ``hook(method, path)``, if set, is
    called in the request's thread first (tests block in it to hold a request). ``counts``
    has the requests seen per method, ``peak`` the most that were in the server at once.
    """

    def __init__(self, *, latency_s: float = 0.0, hook: Callable[[str, str], None] | None = None) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.latency_s = latency_s
        self.hook = hook
        self.counts: Counter[str] = Counter()
        self.inside = 0
        self.peak = 0
        self._lock = threading.Condition()
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self._lock:
            self.counts[method] += 1
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            if self.hook is not None:
                self.hook(method, path)
            if self.latency_s:
                time.sleep(self.latency_s)  # the emulated network, not a synchronisation
            return self._app(environ, start_response)
        finally:
            with self._lock:
                self.inside -= 1
                self._lock.notify_all()

    def wait_idle(self, timeout: float = 30) -> bool:
        """Wait until no request is inside the server (e.g. released ones have been answered)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.inside == 0, timeout=timeout)

    def env(self) -> dict[str, str]:
        """The environment a client needs to reach this server (s3fs, boto3, pipeline's workers)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def reset(self) -> None:
        """Forget every bucket and object (moto's own reset), and the counters."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        self.reset_counts()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.peak = self.inside

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def make_folder(folder: Path, images: int) -> None:
    """``images`` distinct JPEGs: the bench pool, each copy with a COM segment naming it."""
    from bench.images import load_pool

    pool = load_pool()
    folder.mkdir(parents=True)
    for i in range(images):
        data, note = pool[i % len(pool)], f"copy {i}".encode()
        segment = b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note
        (folder / f"{i:05d}.jpg").write_bytes(data[:2] + segment + data[2:])  # after SOI


@contextlib.contextmanager
def bench_lock(path: Path | None) -> Iterator[None]:
    """The machine-wide benchmark lock (flock(2), as flock(1) takes it)."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def catalog_ok(catalog: Path) -> int:
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        return db.execute("SELECT count(*) FROM items WHERE status = 'ok'").fetchone()[0]


def bucket_keys(server: MotoServer) -> set[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, **_boto_credentials())
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys.update(obj["Key"] for obj in page.get("Contents", ()))
    return keys


def dataset_samples(catalog: Path) -> int:
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        return db.execute("SELECT count(*) FROM dataset_samples").fetchone()[0]


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def catalog_keys(catalog: Path) -> set[str]:
    """The object keys the catalog's ok rows name (thumbnails and originals)."""
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(items)")]
        wanted = [c for c in columns if c.endswith("_path") or c == "thumbnails"]
        keys: set[str] = set()
        for row in db.execute(f"SELECT {', '.join(wanted)} FROM items WHERE status = 'ok'"):
            for value in row:
                keys.update(_paths_in(value))
    return {f"run/{key}" for key in keys}


def _paths_in(value: object) -> list[str]:
    if not isinstance(value, str) or not value:
        return []
    if value.startswith(("[", "{")):
        found: list[str] = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
            elif isinstance(node, str) and node.startswith(("thumbs/", "originals/")):
                found.append(node)

        walk(json.loads(value))
        return found
    return [value] if value.startswith(("thumbs/", "originals/")) else []


def run_once(
    runner: str, args: argparse.Namespace, folder: Path, work: Path, server: MotoServer
) -> dict[str, Any]:
    catalog = work / "catalog.sqlite"
    if runner == "s3":
        server.reset()
        urllib.request.urlopen(
            urllib.request.Request(f"{server.endpoint}/{BUCKET}", method="PUT"), timeout=30
        ).read()
        out = ["--out", f"s3://{BUCKET}/run", "--catalog", str(catalog)]
    else:
        out = ["--out", str(work / "out")]
    env = {**os.environ, **server.env(), "PYTHONPATH": str(args.tree)}
    for name in FOREIGN_ENV:
        env.pop(name, None)
    command = [
        sys.executable,
        str(args.tree / "cli.py"),
        "run",
        str(folder),
        *out,
        "--procs",
        str(args.procs),
        "-q",
        *args.pipeline_args.split(),
    ]
    server.reset_counts()
    with bench_lock(args.lock):
        tree_cpu, server_cpu = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
            child.wait()
            code = None
        wall = time.perf_counter() - started
        tree_cpu = _cpu(resource.RUSAGE_CHILDREN) - tree_cpu
        server_cpu = _cpu(resource.RUSAGE_SELF) - server_cpu
    result: dict[str, Any] = {
        "runner": runner,
        "wall_s": round(wall, 3),
        "exit": code,
        "requests": dict(server.counts),
        # CPU per image of the run's process tree, and of this process (moto) meanwhile.
        "tree_cpu_ms_per_image": round(tree_cpu / args.images * 1000, 2),
        "server_cpu_ms_per_image": round(server_cpu / args.images * 1000, 2),
    }
    if runner == "local":
        catalog = work / "out" / "catalog.sqlite"
    ok = catalog_ok(catalog) if code == 0 else 0
    result["ok"] = ok
    result["valid"] = code == 0 and ok == args.images
    dataset = "--output-format" in args.pipeline_args and "files" not in args.pipeline_args
    if runner == "s3" and result["valid"] and dataset:
        # Shards only (one object each) and every ok row in one of them (pipeline/dataset/).
        stored = bucket_keys(server)
        result["objects"] = len(stored)
        result["valid"] = dataset_samples(catalog) == ok and all(k.startswith("run/dataset/") for k in stored)
    elif runner == "s3" and result["valid"]:
        named, stored = catalog_keys(catalog), bucket_keys(server)
        result["objects"] = len(stored)
        result["valid"] = named == stored and len(stored) > 0
    result["images_per_s"] = round(args.images / wall, 2)
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "catalog-files", ignore_errors=True)  # a dataset run's local image files
    catalog.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--images", type=int, default=2000, help="distinct JPEGs in the input folder [%(default)s]"
    )
    p.add_argument("--procs", type=int, default=2, help="pipeline run --procs [%(default)s]")
    p.add_argument(
        "--latency-ms", type=float, default=20.0, help="added before each S3 request [%(default)s]"
    )
    p.add_argument(
        "--reps", type=int, default=3, help="repetitions of each runner, alternating [%(default)s]"
    )
    p.add_argument("--runners", default="local,s3", help="some of local,s3 [%(default)s]")
    p.add_argument("--tree", type=Path, default=ROOT, help="code tree whose CLI runs [this repository]")
    p.add_argument("--work-dir", type=Path, default=SHM if SHM.is_dir() else Path(tempfile.gettempdir()))
    p.add_argument("--lock", type=Path, default=Path("/tmp/bench.lock"), help="flock around each timed run")
    p.add_argument("--timeout", type=float, default=900.0, help="longest run, s [%(default)s]")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--pipeline-args", default="", help="extra options for every run, e.g. '--output-format webdataset'")
    args = p.parse_args(argv)
    args.tree = args.tree.resolve()
    runners = [r for r in args.runners.split(",") if r]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = Path(tempfile.mkdtemp(prefix="pipeline-s3-bench-", dir=args.work_dir))
    runs: list[dict[str, Any]] = []
    try:
        folder = work / "in"
        make_folder(folder, args.images)
        with MotoServer(latency_s=args.latency_ms / 1000) as server:
            for rep in range(args.reps):
                for runner in runners if rep % 2 == 0 else runners[::-1]:
                    result = {"rep": rep + 1, **run_once(runner, args, folder, work, server)}
                    runs.append(result)
                    print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {}
    for runner in runners:
        rates = [r["images_per_s"] for r in runs if r["runner"] == runner and r["valid"]]
        summary[runner] = {"median_images_per_s": statistics.median(rates) if rates else None, "runs": rates}
    if all(summary.get(r, {}).get("median_images_per_s") for r in ("local", "s3")):
        summary["local_over_s3"] = round(
            summary["local"]["median_images_per_s"] / summary["s3"]["median_images_per_s"], 3
        )
    report = {
        "when": stamp,
        "tree": str(args.tree),
        "commit": _commit(args.tree),
        "options": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "summary": summary,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"s3-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(r["valid"] for r in runs) else 1


def _commit(tree: Path) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
