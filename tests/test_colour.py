"""Colour (issue 12): wide-gamut photos keep their colours; odd colour data never costs a row.

Thumbnails are sRGB without an embedded profile (bench/README.md, "Colour": why). A
Display P3 photo is made from a real sRGB photograph (``bench/photos.py``: converted with
littleCMS, P3 profile embedded; where the profile comes from: ``display_p3_profile``) and run
through the real CLI; its thumbnail is compared with a colour-managed reference (full
decode, P3 → sRGB with littleCMS, LANCZOS) in CIELAB: mean ΔE (CIE76) < 2 as a browser shows
it, and as a program that ignores profiles reads it (training code, our own dedup).
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

from bench.colour import delta_e
from bench.photos import display_p3_profile, photo, to_display_p3
from pipeline.cli import main

pytestmark = pytest.mark.timeout(180)
SRGB = ImageCms.createProfile("sRGB")


def _as_browser_shows(thumb: Image.Image) -> Image.Image:
    """Chrome, Firefox and Safari convert a tagged image from its profile; untagged is sRGB."""
    icc = thumb.info.get("icc_profile")
    rgb = thumb.convert("RGB")
    if not icc:
        return rgb
    return ImageCms.profileToProfile(rgb, ImageCms.ImageCmsProfile(io.BytesIO(icc)), SRGB, outputMode="RGB")


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _run(folder: Path, out: Path, *args: str) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(main, ["run", str(folder), "--out", str(out), "--procs", "1", "-q", *args])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT key, status, error_class, error_message, thumbnails, mode FROM items")
        return {
            Path(key).name: {"status": s, "class": c, "error": e, "thumbs": json.loads(t or "[]"), "mode": m}
            for key, s, c, e, t, m in rows
        }


def _thumb(out: Path, row: dict[str, object]) -> Image.Image:
    assert row["status"] == "ok", row
    thumb = Image.open(out / row["thumbs"][0]["path"])  # type: ignore[index]
    thumb.load()
    return thumb


def _p3_files() -> dict[str, tuple[bytes, Image.Image]]:
    """name → (file bytes, the picture as the file's pixels in P3)."""
    icc = display_p3_profile()
    files = {}
    for seed, name in ((8, "colorwheel"), (7, "motorcycle"), (1, "coffee")):
        p3 = to_display_p3(photo(seed, 1200, 800))
        files[f"{name}.jpg"] = (_save(p3, "JPEG", quality=95, icc_profile=icc), p3)
    p3 = to_display_p3(photo(17, 1400, 900))
    files["lossy.webp"] = (_save(p3, "WEBP", quality=90, icc_profile=icc), p3)
    rgba = to_display_p3(photo(26, 900, 700)).convert("RGBA")
    rgba.putalpha(255)
    files["alpha.png"] = (_save(rgba, "PNG", icc_profile=icc), rgba)
    return files


def _q85(image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(_save(image, "JPEG", quality=85)))


def _reference(p3: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Colour-managed: the full picture from P3 to sRGB (littleCMS), then LANCZOS."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    srgb = ImageCms.profileToProfile(p3.convert("RGB"), profile, SRGB, outputMode="RGB")
    return srgb.resize(size, Image.Resampling.LANCZOS)


@pytest.mark.parametrize("thumb_format", ["png", "jpeg"])
def test_display_p3_photo_keeps_its_colours(tmp_path: Path, thumb_format: str) -> None:
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    files = _p3_files()
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    rows = _run(folder, out, "--thumb-format", thumb_format)
    for name, (_, p3) in files.items():
        thumb = _thumb(out, rows[name])
        reference = _reference(p3, thumb.size)
        # q85 JPEG alone costs these grainy photos up to ~4.5 dE (chroma subsampling; the
        # reference through the same encode): colour handling may add at most 0.5 to that.
        bound = 2.0 if thumb_format == "png" else delta_e(_q85(reference), reference) + 0.5
        seen = delta_e(_as_browser_shows(thumb), reference)
        assert seen < bound, (name, round(seen, 2), round(bound, 2))
        # The pixels themselves are sRGB: right for a browser, and for a program that reads
        # numbers and ignores profiles (training code, our dedup's thumbnail check).
        assert not thumb.info.get("icc_profile"), name
        raw = delta_e(thumb, reference)
        assert raw < bound, (name, round(raw, 2), round(bound, 2))
    # Without conversion the P3 numbers read as sRGB would be visibly off (the test means it).
    data, p3 = files["colorwheel.jpg"]
    assert delta_e(p3.resize((256, 171), Image.Resampling.LANCZOS), _reference(p3, (256, 171))) > 4.0


def test_srgb_photo_is_unchanged(tmp_path: Path) -> None:
    """A photo tagged sRGB (most camera JPEGs) comes out with the same pixels as an untagged one."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    image = photo(3, 1200, 800)
    srgb = ImageCms.ImageCmsProfile(SRGB).tobytes()
    (folder / "tagged.png").write_bytes(_save(image, "PNG", icc_profile=srgb))
    (folder / "untagged.png").write_bytes(_save(image, "PNG"))
    rows = _run(folder, out, "--thumb-format", "png")
    tagged, untagged = _thumb(out, rows["tagged.png"]), _thumb(out, rows["untagged.png"])
    assert not tagged.info.get("icc_profile")
    diff = np.abs(np.asarray(tagged, np.int16) - np.asarray(untagged, np.int16))
    assert diff.max() <= 1, diff.max()


def _broken_profiles() -> dict[str, bytes]:
    p3 = display_p3_profile()
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    return {
        "garbage": b"not an ICC profile " * 20,
        "cut": p3[:200],  # header and tag table, tags missing
        "lab": lab,  # a valid profile of another colour space
        "zeros": bytes(len(p3)),
    }


def test_broken_icc_profiles_do_not_cost_the_row(tmp_path: Path) -> None:
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    image = photo(5, 900, 600)
    for name, icc in _broken_profiles().items():
        (folder / f"{name}.jpg").write_bytes(_save(image, "JPEG", quality=95, icc_profile=icc))
        (folder / f"{name}.png").write_bytes(_save(image, "PNG", icc_profile=icc))
        (folder / f"{name}.webp").write_bytes(_save(image, "WEBP", quality=90, icc_profile=icc))
        (folder / f"cmyk-{name}.jpg").write_bytes(
            _save(image.convert("CMYK"), "JPEG", quality=95, icc_profile=icc)
        )
    (folder / "cmyk-p3.jpg").write_bytes(  # a profile of the wrong colour space for CMYK
        _save(image.convert("CMYK"), "JPEG", quality=95, icc_profile=display_p3_profile())
    )
    (folder / "cmyk.jpg").write_bytes(_save(image.convert("CMYK"), "JPEG", quality=95))
    rows = _run(folder, out, "--thumb-format", "png")
    assert len(rows) == len(list(folder.iterdir()))
    for name, row in rows.items():
        thumb = _thumb(out, row)
        # Nothing usable to convert from: the pixels are taken as sRGB, as browsers do with
        # a profile they cannot read, and no broken profile is passed on.
        assert not thumb.info.get("icc_profile"), name
        assert thumb.mode == "RGB", name
        expected = image.convert("CMYK").convert("RGB") if name.startswith("cmyk") else image
        delta = delta_e(thumb, expected.resize(thumb.size, Image.Resampling.LANCZOS))
        assert delta < 2.0, (name, round(delta, 2))
    assert rows["cmyk.jpg"]["mode"] == "CMYK"
