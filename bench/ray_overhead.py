"""What Ray adds: the same manifest, the same run, local process pool vs Ray executor.

A loopback image server (its own process, 127.0.0.1 only) serves distinct JPEGs: the pool
image ``N % pool`` with ``N`` written into a JPEG comment, so every URL has its own SHA-256
as on the web. The run is repeated alternately with each executor (the machine is shared
and noisy; alternating spreads the noise), each into a fresh OUT, and the script prints
medians and the ratios against the local executor measured in this same invocation:

* ``ray (warm)``: Ray already running (``ray.init`` done before the clock starts): starting
  the run's actors (one worker process per CPU, a few seconds on a busy 2-core machine), the
  calls that feed them rows and bring finished rows back;
* ``ray start``: what ``ray.init`` + ``ray.shutdown`` cost once, which a one-off local
  ``--executor ray`` pays on top.

``--silent-every K`` makes every K-th URL one that never answers (the server holds it
without a byte for ``--silent-hold`` s; the run's ``--timeout`` ends each attempt): what
issue 10 is about. Such a row should cost one download slot, not a worker.

Run:  python bench/ray_overhead.py --rows 3000 --shard-size 100 --procs 2 --repeats 3
      python bench/ray_overhead.py --rows 2000 --silent-every 100 --timeout 5 --repeats 2
Needs: pip install 'pipeline[ray]'. Every loop is bounded by --repeats and --max-seconds.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import logging
import multiprocessing
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runner import run
from pipeline.schedule.executors import LocalExecutor


def _pool(count: int, width: int, height: int) -> list[bytes]:
    from PIL import Image, ImageDraw

    images = []
    for seed in range(count):
        im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        draw = ImageDraw.Draw(im)
        for k in range(8):
            x, y = (seed * 97 + k * 61) % width, (seed * 53 + k * 89) % height
            draw.ellipse(
                (x, y, x + width // 4, y + height // 4), fill=((seed * 40) % 256, k * 30, 200 - k * 20)
            )
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def _serve(port_out: multiprocessing.connection.Connection, pool_size: int, silent_hold: float = 60.0) -> None:
    pool = _pool(pool_size, 800, 600)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.startswith("/silent/"):
                time.sleep(silent_hold)  # never a byte: the client's deadline ends the attempt
                self.close_connection = True
                return
            n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
            text = f"bench image {n}".encode()
            body = b"\xff\xd8\xff\xfe" + struct.pack(">H", len(text) + 2) + text + pool[n % len(pool)][2:]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_out.send(server.server_address[1])
    server.serve_forever()


def _timed(manifest: Path, out: Path, executor: object, args: argparse.Namespace) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    deadline = {} if args.timeout is None else {"timeout": args.timeout}
    summary = run(
        manifest, out=out, executor=executor, procs=args.procs, shard_size=args.shard_size, sizes=(256,),
        allow_private=True,  # the image server is on 127.0.0.1
        **deadline,
    )
    elapsed = time.perf_counter() - started
    return elapsed, summary.by_status.get("ok", 0)


def _path(n: int, args: argparse.Namespace) -> str:
    if args.silent_every and n % args.silent_every == args.silent_every // 2:
        return f"silent/{n}"
    return f"img/{n}.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=900, help="Stop repeating after this long.")
    parser.add_argument("--silent-every", type=int, default=0, help="Every K-th URL never answers (0: none).")
    parser.add_argument("--silent-hold", type=float, default=60.0, help="How long the server holds one.")
    parser.add_argument("--timeout", type=float, default=None, help="The run's --timeout (per attempt).")
    args = parser.parse_args()

    import ray

    from pipeline.schedule.ray_executor import RayExecutor

    receiver, sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(sender, 24, args.silent_hold), daemon=True
    )
    server.start()
    if not receiver.poll(60):
        sys.exit("image server did not start")
    port = receiver.recv()
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    try:
        manifest = work / "manifest.txt"
        manifest.write_text("".join(f"http://127.0.0.1:{port}/{_path(n, args)}\n" for n in range(args.rows)))
        silent = sum(_path(n, args).startswith("silent/") for n in range(args.rows))

        started = time.perf_counter()
        ray.init(num_cpus=args.procs, include_dashboard=False, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - started
        times: dict[str, list[float]] = {"local": [], "ray (warm)": []}
        deadline = time.monotonic() + args.max_seconds
        for repeat in range(args.repeats):
            if time.monotonic() > deadline:
                break
            for name, executor in (("local", LocalExecutor(args.procs)), ("ray (warm)", RayExecutor())):
                elapsed, ok = _timed(manifest, work / "out", executor, args)
                if ok != args.rows - silent:
                    sys.exit(f"{name}: {ok} of {args.rows - silent} rows ok; the comparison would be meaningless")
                times[name].append(elapsed)
                print(
                    f"  repeat {repeat + 1} {name:<11} {elapsed:7.2f} s  {args.rows / elapsed:7.0f} rows/s",
                    flush=True,
                )
        started = time.perf_counter()
        ray.shutdown()
        ray_stop = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.kill()
        server.join(5)

    base = statistics.median(times["local"])
    warm = statistics.median(times["ray (warm)"])
    result = {
        "rows": args.rows, "shard_size": args.shard_size, "procs": args.procs, "repeats": len(times["local"]),
        "silent": silent, "timeout": args.timeout,
        "local_s": round(base, 2), "ray_warm_s": round(warm, 2), "ray_warm_over_local": round(warm / base, 3),
        "ray_start_s": round(ray_start, 2), "ray_stop_s": round(ray_stop, 2),
        "ray_cold_over_local": round((warm + ray_start + ray_stop) / base, 3),
    }  # fmt: skip
    print(
        f"local {base:.2f} s | ray warm {warm:.2f} s (x{warm / base:.3f}) | "
        f"ray.init {ray_start:.2f} s + shutdown {ray_stop:.2f} s -> one-off ray run x{result['ray_cold_over_local']:.3f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
