"""The benchmark's image pool: photo-like JPEGs, 640x480 to 4000x3000, quality 85.

Photo-like means what a JPEG encoder and a resampler see in real photos: smooth regions at
several scales, edges, and fine sensor-like grain, giving ~0.1-0.3 bytes per pixel at q85.
Flat synthetic pictures compress 10x better and decode faster, which would flatter every
runner. The pool is generated once (seeded, so identical on every machine) and cached.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

POOL_VERSION = 1
# (width, height, count): mean ~1.3 MP, a long tail up to a 12 MP camera frame; a quarter
# of the pictures are portrait.
POOL_SPEC: tuple[tuple[int, int, int], ...] = (
    (640, 480, 6),
    (800, 600, 6),
    (1024, 768, 8),
    (1280, 960, 6),
    (1600, 1200, 4),
    (2048, 1536, 1),
    (4000, 3000, 1),
)
QUALITY = 85
DEFAULT_CACHE = Path("/tmp/pipeline-bench-pool")


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    # Octaves of smooth colour noise: large shapes, mid detail, texture.
    for cells, weight in ((4, 0.55), (24, 0.3), (160, 0.15)):
        h = max(2, cells * height // max(width, height))
        w = max(2, cells * width // max(width, height))
        small = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        layer = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)
        acc += weight * np.asarray(layer, np.float32)
    acc += rng.normal(0.0, 5.0, (height, width, 1)).astype(np.float32)  # luminance grain
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8), "RGB")


def _sizes() -> list[tuple[int, int]]:
    out = []
    for w, h, n in POOL_SPEC:
        for i in range(n):
            out.append((h, w) if i % 4 == 3 else (w, h))
    return out


def load_pool(cache: Path = DEFAULT_CACHE) -> list[bytes]:
    """The pool's JPEG bytes, generating and caching them on first use."""
    folder = cache / f"v{POOL_VERSION}"
    sizes = _sizes()
    paths = [folder / f"{i:03d}_{w}x{h}.jpg" for i, (w, h) in enumerate(sizes)]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for i, ((w, h), path) in enumerate(zip(sizes, paths)):
            buf = io.BytesIO()
            photo_like(w, h, seed=i).save(buf, "JPEG", quality=QUALITY)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
    return [p.read_bytes() for p in paths]


def describe(pool: list[bytes]) -> dict[str, object]:
    dims = []
    for data in pool:
        with Image.open(io.BytesIO(data)) as im:
            dims.append(im.size)
    pixels = [w * h for w, h in dims]
    return {
        "images": len(pool),
        "mean_megapixels": round(sum(pixels) / len(pixels) / 1e6, 3),
        "mean_bytes": round(sum(map(len, pool)) / len(pool)),
        "bytes_per_pixel": round(sum(map(len, pool)) / sum(pixels), 3),
        "sizes": sorted({f"{w}x{h}" for w, h in dims}),
        "quality": QUALITY,
    }


if __name__ == "__main__":
    print(json.dumps(describe(load_pool()), indent=2))
