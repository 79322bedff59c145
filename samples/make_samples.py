"""Make the sample images and manifests in this folder, deterministically.

    python samples/make_samples.py           # (re)write samples/
    python samples/make_samples.py --check   # rebuild in a temp folder, compare byte for byte

Every image comes from a seeded generator and Pillow's encoders (no timestamps), so a re-run
with the same Pillow gives byte-identical files. Only Pillow and numpy are needed; the
pipeline package is not imported.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# Real, long-lived Wikimedia Commons files, for people who are online (never used by tests).
# Thumbnails use the standard 500px step; small originals are linked as they are.
_COMMONS = "https://upload.wikimedia.org/wikipedia/commons"
ONLINE_URLS: tuple[tuple[str, str], ...] = (
    ("cat_on_snow", f"{_COMMONS}/thumb/b/b6/Felis_catus-cat_on_snow.jpg/500px-Felis_catus-cat_on_snow.jpg"),
    ("cat03", f"{_COMMONS}/thumb/3/3a/Cat03.jpg/500px-Cat03.jpg"),
    (
        "mona_lisa",
        (
            f"{_COMMONS}/thumb/e/ec/Mona_Lisa%2C_by_Leonardo_da_Vinci%2C_from_C2RMF_retouched.jpg/"
            "500px-Mona_Lisa%2C_by_Leonardo_da_Vinci%2C_from_C2RMF_retouched.jpg"
        ),
    ),
    (
        "blue_marble",
        f"{_COMMONS}/thumb/9/97/The_Earth_seen_from_Apollo_17.jpg/500px-The_Earth_seen_from_Apollo_17.jpg",
    ),
    (
        "eiffel_tower",
        f"{_COMMONS}/thumb/a/a8/Tour_Eiffel_Wikimedia_Commons.jpg/500px-Tour_Eiffel_Wikimedia_Commons.jpg",
    ),
    ("example_jpg", f"{_COMMONS}/a/a9/Example.jpg"),
    ("png_transparency", f"{_COMMONS}/4/47/PNG_transparency_demonstration_1.png"),
    ("rotating_earth_gif", f"{_COMMONS}/2/2c/Rotating_earth_%28large%29.gif"),
    ("google_logo_svg_render", f"{_COMMONS}/thumb/2/2f/Google_2015_logo.svg/500px-Google_2015_logo.svg.png"),
)


# -- pictures --------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Photo-like RGB: a sky/ground gradient, soft shapes and a little sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(60, 255, 3), rng.uniform(0, 200, 3)
    t = (y / height)[..., None]
    base = top * (1 - t) + bottom * t + (x / width)[..., None] * rng.uniform(-40, 40, 3)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1 = x0 + int(rng.integers(30, max(31, width // 2)))
        y1 = y0 + int(rng.integers(30, max(31, height // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=color)
    noisy = np.asarray(im, np.float32) + rng.normal(0, 2.5, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def arrow_up(width: int, height: int) -> Image.Image:
    """An unmistakable 'this way up' picture, for checking EXIF orientation by eye."""
    im = photo(width, height, 500)
    draw = ImageDraw.Draw(im)
    cx = width // 2
    draw.polygon([(cx, 20), (cx - 80, 140), (cx + 80, 140)], fill=(220, 20, 20))
    draw.rectangle((cx - 30, 140, cx + 30, height - 30), fill=(220, 20, 20))
    return im


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(im: Image.Image, quality: int = 80, **params: object) -> bytes:
    return encode(im, "JPEG", quality=quality, **params)


def rotated_exif_jpeg() -> bytes:
    # Stored landscape, tagged "rotate 90° clockwise to display" (orientation 6), as a
    # phone held upright writes it: the arrow points up only if orientation is honoured.
    stored = arrow_up(360, 480).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(stored, 85, exif=exif.tobytes())


def rgba_png() -> bytes:
    im = Image.new("RGBA", (320, 240), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.ellipse((20, 20, 200, 200), fill=(30, 120, 220, 255))
    draw.rectangle((140, 80, 300, 220), fill=(240, 160, 20, 140))  # half transparent
    return encode(im, "PNG", optimize=True)


def animated_gif() -> bytes:
    frames = []
    for i, color in enumerate([(220, 40, 40), (40, 180, 60), (40, 80, 220)]):
        frame = Image.new("RGB", (160, 120), (250, 250, 250))
        ImageDraw.Draw(frame).ellipse((20 + 40 * i, 30, 80 + 40 * i, 90), fill=color)
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


def palette_transparent_png() -> bytes:
    im = Image.new("P", (240, 180), 0)
    im.putpalette([255, 255, 255, 200, 30, 30, 30, 30, 200, 250, 200, 0] + [0] * (256 - 4) * 3)
    draw = ImageDraw.Draw(im)
    draw.rectangle((20, 20, 140, 120), fill=1)
    draw.ellipse((100, 60, 220, 170), fill=2)
    draw.line((0, 179, 239, 0), fill=3, width=6)
    return encode(im, "PNG", transparency=0)  # index 0, the background, is transparent


def gray16_png() -> bytes:
    y, x = np.mgrid[0:200, 0:320]
    ramp = (x / 319 * 50000 + np.sin(y / 12) * 8000 + 8000).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")  # mode I;16


def bilevel_png() -> bytes:
    im = Image.new("1", (320, 200), 1)
    draw = ImageDraw.Draw(im)
    for i in range(0, 320, 40):
        draw.rectangle((i, (i // 40) * 20, i + 20, 200), fill=0)
    draw.text((10, 10), "1-bit", fill=0)
    return encode(im, "PNG")


def truncated_jpeg() -> bytes:
    whole = jpeg(photo(480, 360, 70))
    return whole[: len(whole) * 6 // 10]


def not_an_image() -> bytes:
    # What a web server sends instead of an image: a soft 404 page behind a .jpg URL.
    return (
        b"<!DOCTYPE html>\n<html><head><title>Page not found</title></head>\n"
        b"<body><h1>404</h1><p>The image you asked for is gone.</p></body></html>\n"
    )


# -- the set ---------------------------------------------------------------------------------

# (relative path, caption, maker); order is the manifest's order.
Maker = Callable[[], bytes]
_PHOTO_SIZES = [
    (640, 480),
    (800, 600),
    (480, 640),
    (720, 405),
    (512, 512),
    (600, 400),
    (400, 600),
    (800, 450),
    (320, 240),
    (560, 420),
    (640, 640),
    (780, 520),
    (360, 480),
    (700, 350),
    (450, 600),
    (500, 375),
]


def _photos() -> list[tuple[str, str, Maker]]:
    items: list[tuple[str, str, Maker]] = []
    for i, (w, h) in enumerate(_PHOTO_SIZES, start=1):
        caption = f"photo-like JPEG, {w}x{h}"
        items.append((f"images/photo_{i:03d}.jpg", caption, lambda w=w, h=h, i=i: jpeg(photo(w, h, i))))
    return items


SAMPLES: list[tuple[str, str, Maker]] = [
    *_photos(),
    ("images/photo_001_copy.jpg", "byte-identical copy of photo_001", lambda: jpeg(photo(640, 480, 1))),
    (
        "images/photo_002_small.jpg",
        "near-duplicate: photo_002 resized to 60%",
        lambda: jpeg(photo(800, 600, 2).resize((480, 360), Image.Resampling.LANCZOS)),
    ),
    (
        "images/photo_002_q40.jpg",
        "near-duplicate: photo_002 at quality 40",
        lambda: jpeg(photo(800, 600, 2), 40),
    ),
    ("images/rgba.png", "RGBA PNG with transparent and half-transparent areas", rgba_png),
    ("images/exif_rotated.jpg", "EXIF orientation 6: the arrow points up when honoured", rotated_exif_jpeg),
    ("images/animated.gif", "animated GIF, 3 frames", animated_gif),
    ("images/cmyk.jpg", "CMYK JPEG", lambda: jpeg(photo(400, 300, 40).convert("CMYK"))),
    ("images/palette_transparent.png", "palette PNG, background transparent", palette_transparent_png),
    ("images/gray16.png", "16-bit grayscale PNG", gray16_png),
    ("images/bilevel.png", "1-bit PNG", bilevel_png),
    (
        "images/webp_photo.webp",
        "lossy WebP",
        lambda: encode(photo(480, 320, 50), "WEBP", quality=75, method=4),
    ),
    ("images/gray.jpg", "grayscale JPEG", lambda: jpeg(photo(480, 360, 60).convert("L"))),
    ("images/truncated.jpg", "JPEG cut at 60% of its bytes", lambda: truncated_jpeg()),
    ("images/not_an_image.jpg", "an HTML 404 page behind a .jpg name", not_an_image),
    ("images/more/harbour.jpg", "in a subfolder", lambda: jpeg(photo(640, 360, 80))),
    ("images/more/tower.jpg", "in a subfolder, portrait", lambda: jpeg(photo(360, 640, 81))),
    (
        "images/more/small.png",
        "in a subfolder, small PNG",
        lambda: encode(photo(160, 120, 82), "PNG", optimize=True),
    ),
]


def manifest_rows() -> list[tuple[str, str, str]]:
    rows = [
        (Path(rel).stem if not rel.startswith("images/more/") else "more_" + Path(rel).stem, rel, caption)
        for rel, caption, _ in SAMPLES
    ]
    rows.insert(3, ("photo_001_again", "images/photo_001.jpg", "same URL as photo_001: fetched once"))
    rows.append(("empty_url", "", "row with no url: invalid"))
    rows.append(("ftp_url", "ftp://example.com/x.jpg", "unsupported scheme: invalid"))
    rows.append(("missing_file", "images/does_not_exist.jpg", "local file that is not there"))
    return rows


def build(out: Path) -> list[Path]:
    written = []
    for rel, _, make in SAMPLES:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
        written.append(path)
    written.append(_write_csv(out / "manifest.csv", ("key", "url", "caption"), manifest_rows()))
    written.append(_write_csv(out / "urls.csv", ("key", "url"), ONLINE_URLS))
    return written


def _write_csv(path: Path, header: tuple[str, ...], rows: object) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)  # type: ignore[arg-type]
    return path


def _digests(root: Path, files: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild elsewhere and compare with samples/")
    args = parser.parse_args(argv)
    if not args.check:
        files = build(HERE)
        total = sum(p.stat().st_size for p in files)
        print(f"wrote {len(files)} files, {total / 1024:.0f} KiB, under {HERE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _digests(Path(tmp), build(Path(tmp)))
    stored = {
        rel: hashlib.sha256((HERE / rel).read_bytes()).hexdigest() for rel in fresh if (HERE / rel).exists()
    }
    differ = sorted(rel for rel in fresh if stored.get(rel) != fresh[rel])
    for rel in differ:
        print(f"differs: {rel}", file=sys.stderr)
    print("identical" if not differ else f"{len(differ)} of {len(fresh)} files differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
