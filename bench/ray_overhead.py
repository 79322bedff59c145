"""What Ray adds: the same manifest, the same run, local process pool vs Ray executor.

A loopback image server (its own process, 127.0.0.1 only) serves distinct JPEGs: the pool
image ``N % pool`` with ``N`` written into a JPEG comment, so every URL has its own SHA-256
as on the web. The run is repeated alternately with each executor (the machine is shared
and noisy; alternating spreads the noise), each into a fresh OUT, and the script prints
medians and the ratios against the local executor measured in this same invocation:

* ``ray (warm)``: Ray already running (``ray.init`` done before the clock starts), i.e. the
  steady-state cost per shard of tasks, object store and result transfer;
* ``ray start``: what ``ray.init`` + ``ray.shutdown`` cost once, which a one-off local
  ``--executor ray`` pays on top.

Run:  python bench/ray_overhead.py --rows 3000 --shard-size 100 --procs 2 --repeats 3
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

from pipeline.executors import LocalExecutor
from pipeline.runner import run


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


def _serve(port_out: multiprocessing.connection.Connection, pool_size: int) -> None:
    pool = _pool(pool_size, 800, 600)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
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
    summary = run(
        manifest, out=out, executor=executor, procs=args.procs, shard_size=args.shard_size, sizes=(256,),
        allow_private=True,  # the image server is on 127.0.0.1
    )
    elapsed = time.perf_counter() - started
    return elapsed, summary.by_status.get("ok", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=900, help="Stop repeating after this long.")
    args = parser.parse_args()

    import ray

    from pipeline.ray_executor import RayExecutor

    receiver, sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(sender, 24), daemon=True)
    server.start()
    if not receiver.poll(60):
        sys.exit("image server did not start")
    port = receiver.recv()
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    try:
        manifest = work / "manifest.txt"
        manifest.write_text("".join(f"http://127.0.0.1:{port}/img/{n}.jpg\n" for n in range(args.rows)))

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
                if ok != args.rows:
                    sys.exit(f"{name}: only {ok} of {args.rows} rows ok; the comparison would be meaningless")
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
