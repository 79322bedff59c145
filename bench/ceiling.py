"""The CPU ceiling: ``pipeline.image.process.process_image`` over the same images, from memory, on
every core (one process per core, no network, no event loop, no catalog).

``python -m bench.ceiling W1|W2 COUNT OUT`` prints one JSON line. Image ``i`` has exactly
the bytes the bench server sends for URL id ``i`` (see ``bench.server``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

from bench.images import load_pool
from bench.server import _with_comment
from pipeline.config import ProcessOptions, default_procs
from pipeline.image.process import process_image
from pipeline.store.local import Store


def _slice(args: tuple[str, int, int, int, str]) -> tuple[float, float, int]:
    workload, start, stop, step, out = args
    pool = load_pool()
    bodies = [b"".join(_with_comment(pool[i % len(pool)], i)) for i in range(start, stop, step)]
    options = ProcessOptions(thumbnails=(workload == "W2"))
    store = Store(Path(out))
    began = time.time()
    for body in bodies:
        process_image(body, options=options, store=store)
    return began, time.time(), len(bodies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=("W1", "W2"))
    parser.add_argument("count", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--procs", type=int, default=default_procs())
    args = parser.parse_args()
    n = args.procs
    jobs = [(args.workload, k, args.count, n, str(args.out)) for k in range(n)]
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        spans = pool.map(_slice, jobs)
    began, ended = min(s[0] for s in spans), max(s[1] for s in spans)
    images = sum(s[2] for s in spans)
    print(json.dumps({"images": images, "elapsed_s": ended - began, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
