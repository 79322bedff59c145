"""Cheaper decodes (issue 12): WebP is decoded scaled by libwebp, and still looks like a full decode.

Through real runs of the CLI on a folder of real photographs (``bench/photos.py``:
scikit-image's pictures, scaled up, with grain). Costs are measured in ``bench/formats.py``,
never asserted here; what a test can see is the pixels (PSNR against a full decode +
LANCZOS, the bench's method) and the memory a decode takes (a scaled decode never holds
the full-size picture).
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from bench.photos import photo
from pipeline.cli import main

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent


def _webp(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "WEBP", **params)
    return out.getvalue()


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), np.float64)
    y = np.asarray(b.convert("RGB"), np.float64)
    mse = float(np.mean((x - y) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def _run(folder: Path, out: Path, *args: str) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(main, ["run", str(folder), "--out", str(out), "--procs", "1", "-q", *args])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT key, status, error_message, thumbnails, width, height FROM items")
        return {
            Path(key).name: {
                "status": status,
                "error": error,
                "thumbs": json.loads(thumbs or "[]"),
                "size": (w, h),
            }
            for key, status, error, thumbs, w, h in rows
        }


def _reference(data: bytes, size: tuple[int, int]) -> Image.Image:
    """Full decode, EXIF orientation applied, LANCZOS straight to the thumbnail's size."""
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return full.resize(size, Image.Resampling.LANCZOS)


def test_webp_thumbnails_equal_a_full_decode(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    rgba = photo(31, 1200, 900).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.linspace(255, 64, 1200, dtype=np.uint8)[None, :].repeat(900, 0)))
    files = {
        "lossy.webp": _webp(photo(30, 1600, 1000), quality=80),
        "portrait.webp": _webp(photo(32, 1000, 1500), quality=90),
        "lossless.webp": _webp(photo(33, 1400, 1000), lossless=True, method=2),
        "alpha.webp": _webp(rgba, quality=80),
        "rotated.webp": _webp(photo(34, 1600, 1200), quality=80, exif=exif.tobytes()),
        "small.webp": _webp(photo(35, 300, 200), quality=80),  # under 2x the size: decoded whole
        "two-sizes.webp": _webp(photo(36, 2400, 1600), quality=85),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    rows = _run(folder, out, "--thumb-format", "png", "--sizes", "600,256")
    assert rows["rotated.webp"]["size"] == (1200, 1600)
    for name, data in files.items():
        row = rows[name]
        assert row["status"] == "ok", (name, row["error"])
        for thumb in row["thumbs"]:
            ours = Image.open(out / thumb["path"])
            assert ours.size == (thumb["width"], thumb["height"])
            db = _psnr(ours, _reference(data, ours.size))
            assert db >= 40.0, (name, thumb["size"], round(db, 1))
    # The alpha channel survives the scaled decode (PNG thumbnails keep it).
    alpha = Image.open(out / rows["alpha.webp"]["thumbs"][1]["path"]).getchannel("A")
    assert alpha.getextrema()[0] < 90 and alpha.getextrema()[1] > 240


def test_animated_webp_still_takes_its_first_frame(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    frames = [photo(40 + i, 800, 600) for i in range(2)]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100, quality=85)
    (folder / "anim.webp").write_bytes(out.getvalue())
    rows = _run(folder, tmp_path / "out", "--thumb-format", "png")
    assert rows["anim.webp"]["status"] == "ok", rows["anim.webp"]["error"]
    thumb = Image.open(tmp_path / "out" / rows["anim.webp"]["thumbs"][0]["path"])
    assert _psnr(thumb, frames[0].resize(thumb.size, Image.Resampling.LANCZOS)) >= 35.0


# Peak RSS from VmHWM (this process's own mm): ru_maxrss would carry the parent's peak
# over fork + exec, and pytest's is far higher.
_PEAK = """
import sys
from pathlib import Path
from pipeline.config import ProcessOptions
from pipeline.image.process import process_image
from pipeline.store.local import Store
data = Path(sys.argv[1]).read_bytes()
small = Path(sys.argv[2]).read_bytes()
options = ProcessOptions(keep_originals=False)
def peak_kb():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1])
process_image(small, options=options, store=Store(Path(sys.argv[3])))  # imports, plugins, caches
before = peak_kb()
process_image(data, options=options, store=Store(Path(sys.argv[3])))
print((peak_kb() - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_large_webp_is_never_decoded_at_full_size(tmp_path: Path) -> None:
    """A 9 MP WebP for a 256 px thumbnail: a full decode holds 36 MB of RGBA at least (Pillow
    held three copies: libwebp's canvas, the frame's bytes, the image); a scaled one, ~1 MB."""
    big, small = tmp_path / "big.webp", tmp_path / "small.webp"
    big.write_bytes(_webp(photo(50, 3000, 3000), quality=80))
    small.write_bytes(_webp(photo(51, 320, 240), quality=80))
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(big), str(small), str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    grew_mb = int(done.stdout.strip())
    assert grew_mb < 24, f"peak RSS grew {grew_mb} MB while processing a 9 MP WebP"
