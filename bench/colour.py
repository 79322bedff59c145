"""What converting wide-gamut thumbnails to sRGB costs, next to tagging them with the profile.

    python -m bench.colour [--photos 12] [--reps 5]

Display P3 photos (``bench/photos.py``: real sRGB photographs converted by littleCMS, the P3
profile embedded, 1600x1000 q90 JPEG) through ``process_image`` with the default options
(256 px q85 JPEG), holding ``/tmp/bench.lock`` while timing. Prints:

- CPU-ms per image of ``process_image`` for the P3 files and for the same files without
  their profile (the difference is what colour handling costs), medians of ``--reps``;
- the sRGB transform alone: building one (once per distinct profile, cached) and applying it
  to a 256 px and a 1024 px step;
- thumbnail bytes: ours (sRGB, untagged) and the same pixels with the P3 profile embedded;
- mean ΔE (CIE76) against a colour-managed reference (full decode, P3 → sRGB, LANCZOS) of
  the numbers in the file read as sRGB (what code that ignores profiles sees): converted
  (ours) vs tagged (the P3 numbers, the choice not taken). A browser shows both right.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from bench.photos import display_p3_profile, photo, to_display_p3
from pipeline.config import ProcessOptions
from pipeline.image import process
from pipeline.store.local import Store

SRGB = ImageCms.createProfile("sRGB")


def lab(image: Image.Image) -> np.ndarray:
    """sRGB pixels → CIELAB (D65), by the formulas (not littleCMS, which makes the references)."""
    c = np.asarray(image.convert("RGB"), np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(a: Image.Image, b: Image.Image) -> float:
    """Mean ΔE76 between two pictures of one size."""
    return float(np.mean(np.linalg.norm(lab(a) - lab(b), axis=-1)))


def _cpu_ms(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    started = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - started) / n * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    icc = display_p3_profile()
    p3_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    tagged, plain, pictures = [], [], []
    for seed in range(args.photos):
        p3 = to_display_p3(photo(200 + seed, 1600, 1000))
        for target, extra in ((tagged, {"icc_profile": icc}), (plain, {})):
            out = io.BytesIO()
            p3.save(out, "JPEG", quality=90, **extra)
            target.append(out.getvalue())
        pictures.append(p3)

    options = ProcessOptions(keep_originals=False)
    rows: dict[str, list[float]] = {"p3": [], "untagged": []}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as scratch:
        store = Store(Path(scratch))
        for data in tagged + plain:  # warm-up (and the transform cache: one profile here)
            process.process_image(data, options=options, store=store)
        with open("/tmp/bench.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for rep in range(args.reps):
                for key, files in (("p3", tagged), ("untagged", plain)):
                    fresh = Store(Path(scratch) / f"{key}{rep}")  # existing thumbnails are not encoded again
                    started = time.process_time()
                    for data in files:
                        process.process_image(data, options=options, store=fresh)
                    rows[key].append((time.process_time() - started) / len(files) * 1000.0)
            small = pictures[0].resize((256, 160))
            large = pictures[0].resize((1024, 640))
            transform = ImageCms.buildTransform(p3_profile, SRGB, "RGB", "RGB", flags=ImageCms.Flags.NOCACHE)
            build = _cpu_ms(
                lambda: ImageCms.buildTransform(
                    ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                    SRGB,
                    "RGB",
                    "RGB",
                    flags=ImageCms.Flags.NOCACHE,
                ),
                50,
            )
            apply_small = _cpu_ms(lambda: transform.apply(small), 500)
            apply_large = _cpu_ms(lambda: transform.apply(large), 100)

        ours_bytes, tagged_bytes, de_ours, de_tagged, de_floor = [], [], [], [], []
        for data, p3 in zip(tagged, pictures, strict=True):
            info = process.process_image(data, options=options, store=store)
            path = Path(scratch) / info.thumbnails[0].path
            thumb = Image.open(path).convert("RGB")
            ours_bytes.append(path.stat().st_size)
            # The choice not taken: the P3 numbers, resized the same way, tagged with P3.
            kept = p3.resize(thumb.size, Image.Resampling.BICUBIC, reducing_gap=2.0)
            out = io.BytesIO()
            kept.save(out, "JPEG", quality=85, icc_profile=icc)
            tagged_bytes.append(len(out.getvalue()))
            srgb = ImageCms.profileToProfile(p3, p3_profile, SRGB, outputMode="RGB")
            reference = srgb.resize(thumb.size, Image.Resampling.LANCZOS)
            de_ours.append(delta_e(thumb, reference))
            de_tagged.append(delta_e(Image.open(out).convert("RGB"), reference))
            floor = io.BytesIO()
            reference.save(floor, "JPEG", quality=85)
            de_floor.append(delta_e(Image.open(floor).convert("RGB"), reference))

    p3_ms, plain_ms = statistics.median(rows["p3"]), statistics.median(rows["untagged"])
    print(f"{args.photos} Display P3 photos, 1600x1000 q90 JPEG, default options, medians of {args.reps}")
    print(f"process_image CPU-ms/img: P3-tagged {p3_ms:.2f}, same pixels untagged {plain_ms:.2f}, "
          f"difference {p3_ms - plain_ms:+.2f} ({(p3_ms / plain_ms - 1) * 100:+.1f}%)")  # fmt: skip
    print(f"sRGB transform: build {build:.2f} ms (once per profile), apply 256x160 {apply_small:.3f} ms, "
          f"1024x640 {apply_large:.3f} ms")  # fmt: skip
    print(f"profile: {len(icc)} B; thumbnail bytes, median: ours {statistics.median(ours_bytes):.0f}, "
          f"P3-tagged {statistics.median(tagged_bytes):.0f} "
          f"(+{(statistics.median(tagged_bytes) / statistics.median(ours_bytes) - 1) * 100:.1f}%)")  # fmt: skip
    print(f"mean dE76 of the numbers read as sRGB vs the colour-managed reference: ours "
          f"{statistics.mean(de_ours):.2f} (max {max(de_ours):.2f}), tagged P3 {statistics.mean(de_tagged):.2f} "
          f"(max {max(de_tagged):.2f}); the reference itself through q85 JPEG {statistics.mean(de_floor):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
