"""Does a change to the image stage keep every output? Two code trees, one corpus, a diff.

    python -m bench.process_same_output OLD_DIR [NEW_DIR]

Runs ``process_image`` from ``pipeline`` under OLD_DIR and under NEW_DIR (default: this
checkout), each in its own interpreter, over the bench pool plus a corpus of awkward
images (every EXIF orientation, PNG/WEBP/GIF, odd and 1x1 sizes, CMYK, gray, palette with
transparency, LA, RGBA, 16-bit, 1-bit, an ICC profile, flat, not an image, truncated,
corrupt EXIF), under five option sets. Compared: every ImageInfo field but elapsed_ms (or
the error class and message), and the SHA-256 and mode of every file written to OUT.
Prints the first differences and exits 1 if there are any. Export an old tree with e.g.
``git archive main pipeline | tar -x -C /tmp/old``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.images import load_pool, photo_like


def corpus() -> list[tuple[str, bytes]]:
    items = [(f"pool{i}", data) for i, data in enumerate(load_pool())]

    def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **params)
        return buf.getvalue()

    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        im = photo_like(640 + orientation * 7, 480, orientation)
        items.append((f"exif{orientation}", encode(im, "JPEG", quality=90, exif=exif.tobytes())))
    for width, height in ((300, 200), (97, 61), (2000, 1500), (257, 256), (1, 1), (255, 300), (513, 1030)):
        im = photo_like(width, height, width + height)
        for fmt in ("PNG", "JPEG", "WEBP"):
            items.append((f"{fmt}{width}x{height}", encode(im, fmt)))
    base = photo_like(400, 300, 7)
    items.append(("cmyk", encode(base.convert("CMYK"), "JPEG")))
    items.append(("gray", encode(base.convert("L"), "JPEG")))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    items.append(("palette_trns", encode(palette, "PNG", transparency=3)))
    items.append(("la", encode(base.convert("LA"), "PNG")))
    items.append(("rgba", encode(base.convert("RGBA"), "PNG")))
    ramp = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))
    items.append(("i16", encode(Image.fromarray(ramp), "PNG")))
    items.append(("1bit", encode(base.convert("1"), "PNG")))
    frames = [Image.new("RGB", (120, 80), color) for color in ("red", "lime", "blue")]
    items.append(("gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    items.append(("icc", encode(base, "JPEG", icc_profile=b"\0" * 200)))
    items.append(("flat", encode(Image.new("RGB", (800, 600), (128, 128, 128)), "JPEG")))
    items.append(("junk", b"not an image at all"))
    items.append(("truncated", load_pool()[3][:5000]))
    items.append(("bad_exif", encode(base, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")))
    return items


def _digest(code: str) -> list[list[str]]:
    """Run in a child whose sys.path starts with ``code``."""
    import warnings

    from pipeline.config import ProcessOptions
    try:
        from pipeline.store.local import Store
    except ModuleNotFoundError:  # a tree from before the store/ package (issue 15)
        from pipeline.store import Store  # type: ignore[no-redef]

    try:
        from pipeline.image.process import process_image
    except ModuleNotFoundError:  # a tree from before the image/ package (issue 15)
        from pipeline.process import process_image  # type: ignore[no-redef]

    warnings.simplefilter("ignore")  # Pillow's corrupt-EXIF warnings
    option_sets = [
        ProcessOptions(),
        ProcessOptions(sizes=(1024, 512, 128), thumb_format="webp"),
        ProcessOptions(sizes=(256, 64), thumb_format="png"),
        ProcessOptions(thumbnails=False),
        ProcessOptions(sizes=(100,)),
    ]
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, options in enumerate(option_sets):
            root = Path(scratch) / str(index)
            store = Store(root)
            for name, data in corpus():
                try:
                    info = process_image(data, options=options, store=store)
                    fields = {f: getattr(info, f) for f in info.__dataclass_fields__ if f != "elapsed_ms"}
                    rows.append([str(index), name, repr(fields)])
                except Exception as exc:  # noqa: BLE001 - the error is the output here
                    rows.append([str(index), name, f"{type(exc).__name__}: {exc}"])
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
                rows.append(
                    [str(index), str(path.relative_to(root)), f"{file_digest} {oct(path.stat().st_mode)}"]
                )
    return rows


def _run_child(code: str) -> list[list[str]]:
    if not (Path(code) / "pipeline" / "__init__.py").is_file():
        raise SystemExit(f"{code}: no pipeline/ package there")
    # This file is loaded by path (an older tree need not have it); ``pipeline`` comes from
    # ``code``, checked, so a wrong folder cannot silently compare this checkout with itself.
    script = (
        "import importlib.util, json, sys; code, me = sys.argv[1:]; sys.path[:0] = [code];"
        "import pipeline; assert pipeline.__file__.startswith(code), pipeline.__file__;"
        "spec = importlib.util.spec_from_file_location('same_output', me);"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod);"
        "print(json.dumps(mod._digest(code)))"
    )
    code = str(Path(code).resolve())
    out = subprocess.run(
        [sys.executable, "-c", script, code, str(Path(__file__).resolve())],
        check=True, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    if not 2 <= len(sys.argv) <= 3:
        raise SystemExit(__doc__)
    old_dir = sys.argv[1]
    new_dir = sys.argv[2] if len(sys.argv) == 3 else str(Path(__file__).resolve().parent.parent)
    old, new = _run_child(old_dir), _run_child(new_dir)
    differences = [(a, b) for a, b in zip(old, new, strict=False) if a != b]
    if len(old) != len(new):
        differences.append((["rows", str(len(old))], ["rows", str(len(new))]))
    print(f"{len(old)} outputs compared ({len(corpus())} images x 5 option sets + every file written)")
    for a, b in differences[:10]:
        print(f"- {a}\n+ {b}")
    print("same output" if not differences else f"{len(differences)} differences")
    raise SystemExit(1 if differences else 0)


if __name__ == "__main__":
    main()
