"""CPU time per image of each step of ``process_image``, single thread, on the bench pool.

    python -m bench.process_steps [--out-dir /dev/shm] [--rounds 4] [--prefix-dirs] [--code DIR]

Each round processes the whole pool (bench/images.py: 32 photo-like JPEGs, mean 1.3 MP)
into a fresh OUT under ``--out-dir`` with the default ProcessOptions, and the steps are
timed with ``time.process_time`` by wrapping the functions of ``pipeline.image``'s modules. The
same run also times a bare Pillow draft decode of the pool (the floor no change to our
code can go under) and prints every figure as a ratio to it, since the machine is shared.

``--prefix-dirs`` creates OUT's prefix folders first, as they are after the first few
hundred images of a run; without it every file also pays its folder's mkdir.
``--code DIR`` imports ``pipeline`` from DIR (e.g. an exported older commit) to compare.
``--w1`` times ``thumbnails=False`` (download, SHA-256, keep the original) instead.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib
import io
import math
import pkgutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# Wrapped when present (names differ between versions; a missing one is skipped).
STEPS = (
    "_decode",
    "_open",
    "_resize",
    "_write_thumbnail",
    "_keep_original",
    "dhash",
    "phash",
    "_hashes",
    "_flatten_on_white",
)
MAX_SECONDS = 120.0  # bound on the whole measurement, whatever --rounds says


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="/dev/shm", help="where each round's OUT is made")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prefix-dirs", action="store_true", help="create OUT's prefix folders first")
    parser.add_argument("--w1", action="store_true", help="thumbnails=False (SHA-256 + original only)")
    parser.add_argument("--code", help="import pipeline from this folder instead")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, args.code)

    from PIL import Image

    import pipeline
    from bench.images import load_pool
    from pipeline.config import ProcessOptions
    try:
        from pipeline.store.local import Store
    except ModuleNotFoundError:  # a tree from before the store/ package (issue 15)
        from pipeline.store import Store  # type: ignore[no-redef]

    pool = load_pool()
    options = ProcessOptions(thumbnails=not args.w1)
    totals: collections.Counter[str] = collections.Counter()
    process, modules = _image_modules()
    for module in modules:  # each module calls a step through its own binding of the name
        for name in STEPS:
            if hasattr(module, name):
                setattr(module, name, _timed(totals, name, getattr(module, name)))

    # One untimed round first: imports, plugin registration and Pillow's block cache make
    # the first pass ~50% slower, which is not what a worker pays per image.
    with tempfile.TemporaryDirectory(dir=args.out_dir) as scratch:
        for data in pool:
            process.process_image(data, options=options, store=Store(Path(scratch)))
    totals.clear()

    deadline = time.monotonic() + MAX_SECONDS
    per_round: list[float] = []
    rounds = 0
    with tempfile.TemporaryDirectory(dir=args.out_dir) as scratch:
        while rounds < args.rounds and time.monotonic() < deadline:
            root = Path(scratch) / str(rounds)
            if args.prefix_dirs:
                _make_prefix_dirs(root, options)
            store = Store(root)
            started = time.process_time()
            for data in pool:
                process.process_image(data, options=options, store=store)
            per_round.append(time.process_time() - started)
            rounds += 1
    n = rounds * len(pool)

    floor = _time_per_image(pool, rounds, lambda data: _draft_decode(Image, data, 256))
    totals["sha256"] = _time_per_image(pool, rounds, lambda data: hashlib.sha256(data).hexdigest()) * n

    total = sum(per_round) / n
    print(f"pipeline from {Path(pipeline.__file__).parent.parent}")
    print(
        f"{n} images, {rounds} rounds, OUT in {args.out_dir}, prefix dirs {'made' if args.prefix_dirs else 'fresh'}"
    )
    print(
        f"{'total':22s} {total * 1000:7.3f} ms/image  {total / floor:5.2f}x floor "
        f"(rounds: {', '.join(f'{r / len(pool) * 1000:.2f}' for r in per_round)})"
    )
    print(f"{'floor (Pillow draft)':22s} {floor * 1000:7.3f} ms/image")
    for name, seconds in totals.most_common():
        print(f"{name:22s} {seconds / n * 1000:7.3f} ms/image  {seconds / n / floor:5.2f}x floor")
    print(f"median round {statistics.median(per_round) / len(pool) * 1000:.3f} ms/image")


def _image_modules() -> tuple[ModuleType, list[ModuleType]]:
    """The module holding ``process_image`` and every module of the image stage."""
    try:
        import pipeline.image
        from pipeline.image import process
    except ModuleNotFoundError:  # a tree from before the image/ package (issue 15)
        from pipeline import process

        return process, [process]
    names = (m.name for m in pkgutil.iter_modules(pipeline.image.__path__))
    return process, [importlib.import_module(f"pipeline.image.{name}") for name in names]


def _timed(totals: collections.Counter[str], name: str, fn: Callable[..., object]) -> Callable[..., object]:
    def wrapper(*args: object, **kwargs: object) -> object:
        started = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.process_time() - started

    return wrapper


def _time_per_image(pool: list[bytes], rounds: int, fn: Callable[[bytes], object]) -> float:
    started = time.process_time()
    for _ in range(rounds):
        for data in pool:
            fn(data)
    return (time.process_time() - started) / (rounds * len(pool))


def _draft_decode(image_module, data: bytes, side: int) -> None:  # type: ignore[no-untyped-def]
    with image_module.open(io.BytesIO(data)) as im:
        scale = side / max(im.size)
        im.draft(im.mode, (math.ceil(im.width * scale), math.ceil(im.height * scale)))
        im.load()


def _make_prefix_dirs(root: Path, options) -> None:  # type: ignore[no-untyped-def]
    for prefix in (f"{i:02x}" for i in range(256)):
        (root / "originals" / prefix).mkdir(parents=True, exist_ok=True)
        for size in options.sizes:
            (root / "thumbs" / str(size) / prefix).mkdir(parents=True, exist_ok=True)
    (root / ".tmp").mkdir(exist_ok=True)


if __name__ == "__main__":
    main()
