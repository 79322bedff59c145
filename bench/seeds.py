"""The seed-style baselines: the programs people write first, with the same Pillow work inline.

  sequential  one ``requests.Session``, one URL after the other
  threads     ``ThreadPoolExecutor(5)`` over ``requests``
  asyncio     ``asyncio.gather`` with one shared aiohttp session and a semaphore (64)

W1: SHA-256 + write the original. W2: W1 + the usual Pillow recipe (``exif_transpose``, then
``thumbnail((256, 256))``, JPEG q85 to a file) + dHash/pHash of the thumbnail with the very
functions ``pipeline`` uses, so only the architecture differs.

``python -m bench.seeds MODE W1|W2 URLS_FILE OUT --seconds T`` prints one JSON line; it stops
starting new URLs after T seconds (bounded), so slow runners cost bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

from pipeline.image.hashes import dhash, phash


def work(body: bytes, workload: str, out: Path) -> bool:
    sha = hashlib.sha256(body).hexdigest()
    (out / f"{sha}.jpg").write_bytes(body)
    if workload == "W2":
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(body))).convert("RGB")
        im.thumbnail((256, 256))
        im.save(out / f"{sha}_256.jpg", "JPEG", quality=85)
        dhash(im), phash(im)
    return True


def run_requests(urls: list[str], workload: str, out: Path, deadline: float, threads: int) -> int:
    import requests

    if threads == 1:
        session = requests.Session()
        done = 0
        for url in urls:
            if time.monotonic() > deadline:
                break
            done += work(session.get(url, timeout=30).content, workload, out)
        return done

    local = __import__("threading").local()

    def one(url: str) -> int:
        if time.monotonic() > deadline:
            return 0
        session = getattr(local, "session", None) or setattr(local, "session", requests.Session()) or local.session
        return work(session.get(url, timeout=30).content, workload, out)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, urls))


async def run_asyncio(urls: list[str], workload: str, out: Path, deadline: float) -> int:
    import aiohttp

    limit = asyncio.Semaphore(64)
    async with aiohttp.ClientSession() as session:

        async def one(url: str) -> int:
            async with limit:
                if time.monotonic() > deadline:
                    return 0
                async with session.get(url) as resp:
                    body = await resp.read()
                return work(body, workload, out)

        return sum(await asyncio.gather(*(one(u) for u in urls)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("sequential", "threads", "asyncio"))
    parser.add_argument("workload", choices=("W1", "W2"))
    parser.add_argument("urls", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    urls = args.urls.read_text().split()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.seconds
    if args.mode == "asyncio":
        done = asyncio.run(run_asyncio(urls, args.workload, args.out, deadline))
    else:
        done = run_requests(urls, args.workload, args.out, deadline, 1 if args.mode == "sequential" else 5)
    print(json.dumps({"images": done, "elapsed_s": time.monotonic() - started, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
