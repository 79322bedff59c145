"""What handing one image's CPU work from the event loop to a worker costs.

``python -m bench.handoff [COUNT]`` runs ``process_image`` over COUNT pool images held in
memory, from an asyncio loop with 64 tasks in flight (as in a worker), three ways:

  inline    called in the loop thread (the loop stalls while Pillow works)
  threads   ``run_in_executor`` on a ThreadPoolExecutor (1 and 2 threads): pipeline's design
  process   ``run_in_executor`` on a ProcessPoolExecutor(1): the body is pickled to
            another process and the metadata pickled back (a separate CPU pool)

and prints CPU-ms per image of both processes (each one's RUSAGE_SELF, start-up excluded), which
is what the hand-off costs on a busy machine regardless of how much CPU others take.
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from bench.images import load_pool
from bench.server import _with_comment
from pipeline.config import ProcessOptions
from pipeline.image.process import process_image
from pipeline.store.local import Store


def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime


def _work(body: bytes, root: str) -> object:
    return process_image(body, options=ProcessOptions(), store=Store(Path(root)))


async def _drive(bodies: list[bytes], root: str, executor: Executor | None) -> None:
    limit = asyncio.Semaphore(64)
    loop = asyncio.get_running_loop()

    async def one(body: bytes) -> None:
        async with limit:
            await asyncio.sleep(0)  # a network read would yield here
            if executor is None:
                _work(body, root)
            else:
                await loop.run_in_executor(executor, functools.partial(_work, body, root))

    await asyncio.gather(*(one(b) for b in bodies))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    pool = load_pool()
    bodies = [b"".join(_with_comment(pool[i % len(pool)], i)) for i in range(count)]
    results: dict[str, float] = {}
    base = Path(tempfile.mkdtemp(prefix="handoff-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    ways = ("inline", "threads-1", "threads-2", "process-1")
    try:
        for rep in range(3):
            for way in ways:
                root = str(base / f"{way}-{rep}")
                executor: Executor | None = None
                if way.startswith("threads"):
                    executor = ThreadPoolExecutor(int(way[-1]))
                elif way.startswith("process"):
                    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
                    executor.submit(_work, bodies[0], root).result()  # started, imports done
                child = executor.submit(_cpu).result() if way.startswith("process") else 0.0
                cpu = _cpu()
                asyncio.run(_drive(bodies, root, executor))
                used = _cpu() - cpu
                if way.startswith("process"):
                    used += executor.submit(_cpu).result() - child  # type: ignore[union-attr]
                if executor is not None:
                    executor.shutdown()
                used = used / count * 1000
                results.setdefault(way, []).append(used)  # type: ignore[attr-defined]
                shutil.rmtree(root, ignore_errors=True)
                time.sleep(0.2)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary = {way: round(sorted(v)[1], 3) for way, v in results.items()}  # type: ignore[arg-type]
    print(json.dumps({"images": count, "cpu_ms_per_image_median_of_3": summary}, indent=1))


if __name__ == "__main__":
    main()
