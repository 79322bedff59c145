"""Pre-processing for politeness across machines: a manifest's rows grouped by host, streamed.

On one machine, ``--per-host`` holds for all local worker processes together
(``net/hostlimit.py``), but nothing is shared between machines or between Ray worker
processes, so there the requests one host sees at once are::

    per_host x (machines, or Ray processes, running shards that hold that host's URLs)

In a manifest in crawl order, a popular host appears in every shard, so on a cluster the
bound is ``per_host x`` every machine of a static partition, or every Ray task in flight.
Grouped by host, a host's URLs fill consecutive shards: a host with fewer rows than a shard
is in one or two shards, and a big host in at most as many shards as run at once.

``group_by_host`` is an external merge sort, so memory stays at ``chunk_rows`` rows however
large the manifest: sorted runs of ``chunk_rows`` rows go to temp files beside the output,
then ``heapq.merge`` combines them, at most ``MERGE_FILES`` runs at a time (more passes when
there are more runs), so the open files stay bounded however many chunks there are. The key is the host with its labels
reversed (``com.example.img1``), so the subdomains of one site, often one server, sit
together; rows keep their manifest order within a host. The output is JSONL with the
manifest's own column names (the URL, the key, every extra column), so the run takes it
with the same ``--url-column``/``--key-column``. A row without a key gets its row number
in the original manifest as key, so results can be joined back.

Sort before the first run: row numbers, shard ids and the fingerprint all change with
the order, so a sorted manifest is a new run, not a resume of the unsorted one.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from pipeline.errors import UsageError
from pipeline.manifest.read import read_rows
from pipeline.manifest.spec import ManifestSpec
from pipeline.models import ManifestRow

# Sorted runs open at once while merging: 10,000 chunks must not need 10,000 descriptors (a
# `ulimit -n` of 1,024 is common). Each pass divides the runs by this; two passes cover 4,096.
MERGE_FILES = 64


def host_key(url: str) -> str:
    """``https://img1.Example.com/a.jpg`` → ``com.example.img1``; "" for local paths and junk."""
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    return ".".join(reversed(host.lower().split(".")))


def group_by_host(
    spec: ManifestSpec, dest: str | os.PathLike[str], *, chunk_rows: int = 500_000
) -> tuple[int, int]:
    """Write ``spec``'s rows grouped by host to the JSONL file ``dest``; returns (rows, hosts)."""
    if chunk_rows < 1:
        raise UsageError("--chunk-rows must be at least 1")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Temp runs beside the output: /tmp is often a small RAM disk, the output's disk is not.
    with tempfile.TemporaryDirectory(prefix=".group-by-host-", dir=dest.parent) as scratch:
        runs = [
            _write_run(chunk, Path(scratch) / f"run-{i}.txt")
            for i, chunk in enumerate(_chunks(spec, chunk_rows))
        ]
        passes = 0
        while len(runs) > MERGE_FILES:  # merge groups of runs into longer runs until few are left
            passes += 1
            groups = [runs[i : i + MERGE_FILES] for i in range(0, len(runs), MERGE_FILES)]
            runs = [
                _merge_runs(group, Path(scratch) / f"pass-{passes}-{i}.txt") for i, group in enumerate(groups)
            ]
        tmp = dest.with_name(f".{dest.name}.partial")
        with _opened(runs) as files, tmp.open("w", encoding="utf-8") as out:
            rows, hosts = _merge(files, out)
        os.replace(tmp, dest)  # a half-written output never looks like a manifest
    return rows, hosts


@contextlib.contextmanager
def _opened(paths: list[Path]) -> Iterator[list[IO[str]]]:
    files: list[IO[str]] = []
    try:
        for path in paths:
            files.append(path.open(encoding="utf-8"))
        yield files
    finally:
        for f in files:
            f.close()


def _merge_runs(runs: list[Path], path: Path) -> Path:
    """One longer sorted run from ``runs`` (whole lines, keys kept), which are then deleted."""
    with _opened(runs) as files, path.open("w", encoding="utf-8") as out:
        out.writelines(heapq.merge(*files))
    for run in runs:
        run.unlink()
    return path


def _chunks(spec: ManifestSpec, size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for row in read_rows(spec):
        chunk.append(_line(spec, row))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _line(spec: ManifestSpec, row: ManifestRow) -> str:
    """``host \\t row number \\t json``: plain string order is (host, manifest order)."""
    record = {spec.url_column: row.url, spec.key_column: row.key, **dict(row.extra)}
    return f"{host_key(row.url)}\t{row.row:012d}\t{json.dumps(record, ensure_ascii=False)}\n"


def _write_run(chunk: list[str], path: Path) -> Path:
    chunk.sort()
    with path.open("w", encoding="utf-8") as f:
        f.writelines(chunk)
    return path


def _merge(files: Iterable[IO[str]], out: IO[str]) -> tuple[int, int]:
    rows = hosts = 0
    last: str | None = None
    for line in heapq.merge(*files):
        host, _, rest = line.partition("\t")
        out.write(rest.partition("\t")[2])
        rows += 1
        if host != last:
            hosts += 1
            last = host
    return rows, hosts
