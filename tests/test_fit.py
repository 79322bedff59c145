"""Exact boxes (issue 12, part 3): ``--fit contain|cover|pad``, ``WxH`` sizes, ``--upscale``.

Real runs of the CLI on a folder of real photographs (scikit-image's samples: landscape,
portrait, one stored landscape with EXIF orientation 6, one small, one very wide), checked
against references made by a full decode + ``ImageOps.exif_transpose`` + LANCZOS.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner, Result
from PIL import Image, ImageOps

from pipeline.catalog import Catalog
from pipeline.cli import main
from pipeline.config import ProcessOptions
from pipeline.image.process import process_image
from pipeline.store.local import Store

pytestmark = pytest.mark.timeout(300)

SIZES = "256,200x120"
BOXES = {256: (256, 256), "200x120": (200, 120)}
SMALL = (120, 80)
LANCZOS = Image.Resampling.LANCZOS


# -- the folder ------------------------------------------------------------------------------


def _sample(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _wide() -> Image.Image:
    """~2200x400 of four photographs side by side: the short side decides cover's scale."""
    parts = [_sample(n) for n in ("rocket", "coffee", "chelsea", "astronaut")]
    parts = [p.resize((round(p.width * 400 / p.height), 400), LANCZOS) for p in parts]
    wide = Image.new("RGB", (sum(p.width for p in parts), 400))
    x = 0
    for p in parts:
        wide.paste(p, (x, 0))
        x += p.width
    return wide


def _write_folder(folder: Path) -> None:
    folder.mkdir()
    _sample("rocket").save(folder / "land.jpg", quality=95)  # 640x427
    _sample("rocket").save(folder / "land-q70.jpg", quality=70)  # a near duplicate, for dedup
    _sample("astronaut").crop((106, 0, 406, 512)).save(folder / "port.jpg", quality=95)  # 300x512
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 451x300, shown 300x451 (a phone held upright)
    _sample("chelsea").save(folder / "exif.jpg", quality=95, exif=exif.tobytes())
    _sample("coffee").resize(SMALL, LANCZOS).save(folder / "small.png")
    _wide().save(folder / "wide.jpg", quality=95)


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", *args, "--procs", "1", "-q"])


def _run(folder: Path, out: Path, *args: str) -> Path:
    result = _invoke(str(folder), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return out


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    """Per file name: hashes and the thumbnails keyed by requested size (as given)."""
    with sqlite3.connect(out / "catalog.sqlite") as db:
        found = {}
        for url, status, dh, ph, thumbs in db.execute("SELECT url, status, dhash, phash, thumbnails FROM items"):
            assert status == "ok", url
            listed = json.loads(thumbs)
            found[Path(url).name] = {"dhash": dh, "phash": ph, "thumbs": {str(t["size"]): t for t in listed}}
    return found


def _reference(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _open(out: Path, thumb: dict[str, Any]) -> Image.Image:
    with Image.open(out / thumb["path"]) as im:
        im.load()
    assert im.size == (thumb["width"], thumb["height"])
    return im


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    x, y = np.asarray(a.convert("RGB"), np.float64), np.asarray(b.convert("RGB"), np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _contain(w: int, h: int, box: tuple[int, int]) -> tuple[int, int]:
    im = Image.new("L", (w, h))
    im.thumbnail(box)  # Pillow's rounding; never enlarges
    return im.size


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run per fit over the same folder (PNG: the comparisons see no JPEG noise)."""
    base = tmp_path_factory.mktemp("fit")
    folder = base / "photos"
    _write_folder(folder)
    done = {"folder": folder}
    for fit in ("contain", "cover", "pad"):
        extra = ("--pad-color", "#ff8000") if fit == "pad" else ()
        done[fit] = _run(folder, base / fit, "--sizes", SIZES, "--fit", fit, "--thumb-format", "png", *extra)
    return done


# -- exact sizes and content -----------------------------------------------------------------


def test_contain_fits_within_the_box_like_pillow_thumbnail(runs: dict[str, Path]) -> None:
    for name, row in _rows(runs["contain"]).items():
        ref = _reference(runs["folder"] / name)
        for size, box in BOXES.items():
            thumb = row["thumbs"][str(size)]
            assert (thumb["width"], thumb["height"]) == _contain(*ref.size, box), (name, size)
            # Today's contain pixels (JPEG DCT draft, then BICUBIC), unchanged: 34-49 dB here,
            # the lowest where libjpeg's 1/8 decode is most of the reduction (wide.jpg).
            assert psnr(_open(runs["contain"], thumb), ref.resize((thumb["width"], thumb["height"]), LANCZOS)) >= 33


def test_cover_fills_the_box_exactly_with_its_centre(runs: dict[str, Path]) -> None:
    for name, row in _rows(runs["cover"]).items():
        ref = _reference(runs["folder"] / name)
        for size, box in BOXES.items():
            thumb = _open(runs["cover"], row["thumbs"][str(size)])
            if name == "small.png":
                continue  # below: never upscaled
            assert thumb.size == box, (name, size)
            # ImageOps.fit: the centred crop of the box's aspect ratio, resized (float box).
            # 45-50 dB here; wide.jpg's 200x120 needs a 1/2 draft, not the 1/8 its longest
            # side alone would pick (a crop 50 px high, enlarged; that draft fails this bar).
            assert psnr(thumb, ImageOps.fit(ref, box, LANCZOS)) >= 40, (name, size)


def test_cover_of_a_portrait_exif_photo_is_cropped_upright(runs: dict[str, Path]) -> None:
    ref = _reference(runs["folder"] / "exif.jpg")
    assert ref.size == (300, 451)
    thumb = _open(runs["cover"], _rows(runs["cover"])["exif.jpg"]["thumbs"]["200x120"])
    upright = ImageOps.fit(ref, (200, 120), LANCZOS)
    # The stored (unrotated) picture cropped the same way is another picture entirely.
    with Image.open(runs["folder"] / "exif.jpg") as stored:
        sideways = ImageOps.fit(stored.convert("RGB"), (200, 120), LANCZOS)
    assert psnr(thumb, upright) >= 40
    assert psnr(thumb, sideways) < 20


def test_pad_letterboxes_to_the_exact_box_in_the_pad_colour(runs: dict[str, Path]) -> None:
    for name, row in _rows(runs["pad"]).items():
        ref = _reference(runs["folder"] / name)
        for size, box in BOXES.items():
            thumb = _open(runs["pad"], row["thumbs"][str(size)])
            assert thumb.size == box, (name, size)
            cw, ch = _contain(*ref.size, box)
            left, top = (box[0] - cw) // 2, (box[1] - ch) // 2
            pixels = np.asarray(thumb.convert("RGB"))
            inside = np.zeros(pixels.shape[:2], bool)
            inside[top : top + ch, left : left + cw] = True
            assert (pixels[~inside] == (255, 128, 0)).all(), (name, size)
            content = thumb.crop((left, top, left + cw, top + ch))
            assert psnr(content, ref.resize((cw, ch), LANCZOS)) >= 33, (name, size)  # contain's pixels
            if box[0] * ch != box[1] * cw:  # another aspect ratio than the box: there are borders
                assert (~inside).any()


def test_small_image_never_upscaled_by_default(runs: dict[str, Path]) -> None:
    """contain: unchanged; cover: the box's aspect ratio cut at native scale; pad: the exact
    box, the image at native scale in its centre."""
    sizes = {fit: {s: (t["width"], t["height"]) for s, t in _rows(runs[fit])["small.png"]["thumbs"].items()}
             for fit in ("contain", "cover", "pad")}  # fmt: skip
    assert sizes["contain"] == {"256": SMALL, "200x120": SMALL}
    assert sizes["cover"] == {"256": (80, 80), "200x120": (120, 72)}
    assert sizes["pad"] == {"256": (256, 256), "200x120": (200, 120)}
    small = _reference(runs["folder"] / "small.png")
    cover = _open(runs["cover"], _rows(runs["cover"])["small.png"]["thumbs"]["200x120"])
    assert np.array_equal(np.asarray(cover), np.asarray(small.crop((0, 4, 120, 76))))  # a plain crop
    pad = _open(runs["pad"], _rows(runs["pad"])["small.png"]["thumbs"]["256"])
    assert np.array_equal(np.asarray(pad.crop((68, 88, 188, 168))), np.asarray(small))


def test_upscale_when_asked(tmp_path: Path, runs: dict[str, Path]) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "small.png").write_bytes((runs["folder"] / "small.png").read_bytes())
    small = _reference(folder / "small.png")
    got = {}
    for fit in ("contain", "cover", "pad"):
        out = _run(folder, tmp_path / fit, "--sizes", SIZES, "--fit", fit, "--upscale", "--thumb-format", "png")
        got[fit] = {s: _open(out, t) for s, t in _rows(out)["small.png"]["thumbs"].items()}
    assert {s: im.size for s, im in got["contain"].items()} == {"256": (256, 171), "200x120": (180, 120)}
    assert {s: im.size for s, im in got["cover"].items()} == {"256": (256, 256), "200x120": (200, 120)}
    assert {s: im.size for s, im in got["pad"].items()} == {"256": (256, 256), "200x120": (200, 120)}
    assert psnr(got["cover"]["200x120"], ImageOps.fit(small, (200, 120), LANCZOS)) >= 35  # enlarged: softer
    assert got["pad"]["200x120"].getpixel((5, 60)) == (0, 0, 0)  # default pad colour: black
    assert psnr(got["pad"]["200x120"].crop((10, 0, 190, 120)), small.resize((180, 120), LANCZOS)) >= 35
    tags = {p.name for p in (tmp_path / "cover" / "thumbs").iterdir()}
    assert tags == {"256-cover-up", "200x120-cover-up"}


# -- hashes, names, fingerprint --------------------------------------------------------------


def test_hashes_do_not_depend_on_the_fit(runs: dict[str, Path]) -> None:
    """dHash/pHash come from the whole picture at 256 px, never from a crop or a border."""
    hashes = {
        fit: {n: (r["dhash"], r["phash"]) for n, r in _rows(runs[fit]).items()} for fit in ("contain", "cover", "pad")
    }
    assert hashes["contain"] == hashes["pad"]
    # ...and they are those of the same picture given as a plain longest side.
    plain = _rows(_run(runs["folder"], runs["folder"].parent / "plain", "--sizes", "256", "--thumb-format", "png"))
    assert {n: (r["dhash"], r["phash"]) for n, r in plain.items()} == hashes["contain"]
    # cover's 200x120 of wide.jpg needs a 1/2 JPEG draft where contain takes 1/8: the 256 px
    # hash step comes from another decode, which may move a bit (as --sizes 256,512 against
    # --sizes 256 did before). Every other picture decodes alike: the same hashes.
    for name, (dh, ph) in hashes["cover"].items():
        want_dh, want_ph = hashes["contain"][name]
        if name != "wide.jpg":
            assert (dh, ph) == (want_dh, want_ph), name
        assert bits_apart(dh, want_dh) <= 2 and bits_apart(ph, want_ph) <= 2, name


def bits_apart(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def test_every_variant_has_its_own_folder(runs: dict[str, Path]) -> None:
    folders = {fit: sorted(p.name for p in (runs[fit] / "thumbs").iterdir()) for fit in ("contain", "cover", "pad")}
    assert folders == {
        "contain": ["200x120", "256"],  # PNG: lossless, no quality tag (as before)
        "cover": ["200x120-cover", "256-cover"],
        "pad": ["200x120-pad-ff8000", "256-pad-ff8000"],
    }
    names = {
        (str(o.sizes[0]), o.thumb_variant)
        for o in (
            ProcessOptions(),
            ProcessOptions(sizes=("512x384",)),
            ProcessOptions(sizes=("384x512",)),
            ProcessOptions(fit="cover"),
            ProcessOptions(fit="pad"),
            ProcessOptions(fit="pad", pad_color="white"),
            ProcessOptions(fit="cover", upscale=True),
            ProcessOptions(upscale=True),
            ProcessOptions(fit="cover", thumb_quality=30),
        )
    }
    assert len(names) == 9
    assert ProcessOptions().thumb_variant == "q85"  # today's names for today's options
    assert ProcessOptions(sizes=("256x256",)).sizes == (256,)  # the same box, the same name
    assert ProcessOptions(sizes=("512x384",), fit="cover").thumb_variant == "cover-q85"
    store = Store(Path("/nowhere"))
    sha = "ab" + "0" * 62
    assert store.thumb_relpath(sha, "512x384", "jpg", variant="cover-q85") == f"thumbs/512x384-cover-q85/ab/{sha}.jpg"


def test_default_run_resumes_a_catalog_made_before_fit_existed(tmp_path: Path, runs: dict[str, Path]) -> None:
    out = _run(runs["folder"], tmp_path / "out")
    with Catalog(out / "catalog.sqlite") as catalog:
        fingerprint = catalog.get_meta("fingerprint")
        assert fingerprint["options"]["sizes"] == [256]
        for name in ("fit", "pad_color", "upscale"):
            assert fingerprint["options"].pop(name) is None  # older catalogs have no entry: null too
        catalog.set_meta("fingerprint", fingerprint)
    _run(runs["folder"], out)  # resumes (a refusal exits 2)
    assert {p.name for p in (out / "thumbs").iterdir()} == {"256-q85"}


def test_resume_with_another_fit_is_refused_then_forced(tmp_path: Path, runs: dict[str, Path]) -> None:
    out = _run(runs["folder"], tmp_path / "out", "--sizes", "200x120", "--fit", "cover")
    before = {t["path"] for r in _rows(out).values() for t in r["thumbs"].values()}
    refused = _invoke(str(runs["folder"]), "--out", str(out), "--sizes", "200x120", "--fit", "pad")
    assert refused.exit_code == 2, refused.output
    assert "options.fit" in refused.output and "options.pad_color" in refused.output
    _run(runs["folder"], out, "--sizes", "200x120", "--fit", "pad", "--force")
    after = {t["path"] for r in _rows(out).values() for t in r["thumbs"].values()}
    assert before.isdisjoint(after)
    assert all(p.startswith("thumbs/200x120-pad-000000-q85/") for p in after)
    assert all((out / p).is_file() for p in before | after)  # nothing overwritten
    refused = _invoke(str(runs["folder"]), "--out", str(out), "--sizes", "200x120", "--fit", "pad", "--upscale")
    assert refused.exit_code == 2 and "options.upscale" in refused.output


def test_export_and_dedup_read_box_sizes(runs: dict[str, Path]) -> None:
    exported = CliRunner().invoke(main, ["export", str(runs["cover"]), "--format", "jsonl"])
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in exported.output.splitlines()]
    assert [c for c in records[0] if c.startswith("thumb_")] == ["thumb_200x120", "thumb_256"]
    assert all(r["thumb_200x120"].startswith("thumbs/200x120-cover/") for r in records)
    # The thumbnail check (near pairs: land.jpg and land-q70.jpg) picks the smallest by pixels.
    deduped = CliRunner().invoke(main, ["dedup", str(runs["cover"]), "--report", str(runs["cover"] / "d.html")])
    assert deduped.exit_code == 0, deduped.output
    assert "1 groups, 1 duplicates (0 exact)" in deduped.output
    assert "thumbs/200x120-cover/" in (runs["cover"] / "d.html").read_text()


# -- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--sizes", "0x5"), "between 8 and 16384"),
        (("--sizes", "axb"), "'axb' is not a size"),
        (("--sizes", "256x"), "'256x' is not a size"),
        (("--sizes", "x256"), "'x256' is not a size"),
        (("--sizes", "256,512x384x2"), "'512x384x2' is not a size"),
        (("--sizes", "256,256x256"), "must not repeat"),
        (("--fit", "stretch"), "'stretch' is not one of 'contain', 'cover', 'pad'"),
        (("--fit", "pad", "--pad-color", "nocolour"), "--pad-color: 'nocolour' is not a colour"),
        (("--fit", "pad", "--pad-color", "#12345"), "--pad-color: '#12345' is not a colour"),
        (("--fit", "pad", "--pad-color", "transparent"), "needs a thumbnail format with alpha"),
    ],
)
def test_bad_sizes_and_colours_are_usage_errors(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    result = _invoke(str(folder), "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not (tmp_path / "out").exists()


def test_transparent_pad_for_formats_with_alpha(tmp_path: Path) -> None:
    data = io.BytesIO()
    _sample("rocket").save(data, "JPEG", quality=95)
    for fmt in ("png", "webp"):
        options = ProcessOptions(sizes=("200x200",), fit="pad", pad_color="transparent", thumb_format=fmt)
        info = process_image(data.getvalue(), options=options, store=Store(tmp_path))
        with Image.open(tmp_path / info.thumbnails[0].path) as im:
            assert (im.size, im.mode) == ((200, 200), "RGBA")
            alpha = np.asarray(im.getchannel("A"))
        assert info.thumbnails[0].path.startswith("thumbs/200-pad-transparent")  # 200x200 is 200
        assert (alpha[:30] == 0).all() and (alpha[-30:] == 0).all()  # 200x133 in 200x200: 33 + 34 rows
        assert (alpha[40:160] == 255).all()


# -- every EXIF orientation, straight through the CPU stage ----------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fit", ["cover", "pad"])
def test_every_exif_orientation_before_the_geometry(tmp_path: Path, orientation: int, fit: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = io.BytesIO()
    _sample("chelsea").save(data, "JPEG", quality=95, exif=exif.tobytes())
    options = ProcessOptions(sizes=("160x100", 64), fit=fit, thumb_format="png", keep_originals=False)
    info = process_image(data.getvalue(), options=options, store=Store(tmp_path))
    ref = _reference_bytes(data.getvalue())
    for thumb, box in zip(info.thumbnails, ((160, 100), (64, 64)), strict=True):
        with Image.open(tmp_path / thumb.path) as im:
            got = im.convert("RGB")
        expected = ImageOps.fit(ref, box, LANCZOS) if fit == "cover" else _pad(ref, box, (0, 0, 0))
        assert got.size == box
        assert psnr(got, expected) >= 36, (orientation, box)


def test_the_draft_is_planned_on_the_displayed_image(tmp_path: Path) -> None:
    """Stored 2200x400, shown 400x2200 (EXIF 6): cover 160x96 needs 0.4 of the width shown,
    a 1/2 draft. Planned on the stored shape it would need 96/400 = 0.24 and take 1/4: a
    100 px wide decode enlarged to 160."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = io.BytesIO()
    _wide().save(data, "JPEG", quality=95, exif=exif.tobytes())
    options = ProcessOptions(sizes=("160x96",), fit="cover", thumb_format="png", keep_originals=False)
    info = process_image(data.getvalue(), options=options, store=Store(tmp_path))
    with Image.open(tmp_path / info.thumbnails[0].path) as im:
        got = im.convert("RGB")
    assert psnr(got, ImageOps.fit(_reference_bytes(data.getvalue()), (160, 96), LANCZOS)) >= 40


def _pad(im: Image.Image, box: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """The documented pad: contain (Pillow's thumbnail rounding), centred, the odd pixel
    right/bottom."""
    cw, ch = _contain(*im.size, box)
    canvas = Image.new("RGB", box, colour)
    canvas.paste(im.resize((cw, ch), LANCZOS), ((box[0] - cw) // 2, (box[1] - ch) // 2))
    return canvas


def _reference_bytes(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im).convert("RGB")
