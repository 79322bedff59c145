"""Image formats beyond the classic web ones (issue 12): AVIF by default, HEIC/HEIF with the
``heif`` extra (pillow-heif), ``--thumb-format avif`` and ``--formats``.

Every case is a real photograph (scikit-image's sample data, shipped in its wheel) encoded
here with Pillow or pillow-heif, and goes through the real ``pipeline run`` on a folder:
EXIF orientation, alpha, animation/sequences, 10-bit, a cut file and a pixel bomb.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pillow_heif  # the heif extra; the test extra installs it
import pytest
import skimage.data as skdata  # real photographs in scikit-image's wheel (the test extra)
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.config import DEFAULT_FORMATS, ProcessOptions
from pipeline.errors import ErrorClass, ItemError
from pipeline.image.process import process_image
from pipeline.store.local import Store

pytestmark = pytest.mark.timeout(180)

ORIENTATION = 0x0112
HEIF_HINT = "pip install 'pipeline[heif]'"


# -- real photographs, encoded here --------------------------------------------------------------


def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())  # 600 x 400


def chelsea() -> Image.Image:
    return Image.fromarray(skdata.chelsea())  # 451 x 300: a cat, landscape


def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())  # 512 x 512


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def heic(im: Image.Image, **params: object) -> bytes:
    pillow_heif.register_heif_opener()  # only so Pillow can save HEIF in this test process
    return encode(im, "HEIF", quality=90, **params)


def avif(im: Image.Image, **params: object) -> bytes:
    return encode(im, "AVIF", quality=90, **params)


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = value
    return exif.tobytes()


def with_hole(im: Image.Image) -> Image.Image:
    """RGBA: the photo, fully transparent in a band across the middle."""
    rgba = im.convert("RGBA")
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[im.height // 3 : 2 * im.height // 3, :] = 0
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def heic_10bit(im: Image.Image) -> bytes:
    """A 10-bit HEIC of ``im`` (pillow-heif writes 16-bit input as 10 bits per sample)."""
    pixels = np.asarray(im.convert("RGB")).astype(np.uint16) * 257
    heif = pillow_heif.from_bytes(mode="RGB;16", size=im.size, data=pixels.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=90)
    return buffer.getvalue()


def declaring(data: bytes, width: int, height: int) -> bytes:
    """The same ISO-BMFF image whose 'ispe' box (image size) claims width x height."""
    at = data.index(b"ispe") + 8  # box type, then version/flags, then width and height
    return data[:at] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[at + 8 :]


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def reference(im: Image.Image, size: int = 256) -> Image.Image:
    ref = im.copy()
    ref.thumbnail((size, size), Image.Resampling.LANCZOS)
    return ref


# -- the CLI on a folder ----------------------------------------------------------------------------


def run_folder(folder: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    """``pipeline run FOLDER`` in a child interpreter; rows by file name."""
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(folder), "--out", str(out), "--procs", "1", "-q", *args],
        check=False, capture_output=True, text=True, timeout=150, env=env, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return rows(out)


def rows(out: Path) -> dict[str, dict]:
    with sqlite3.connect(out / "catalog.sqlite") as db:
        db.row_factory = sqlite3.Row
        found = {Path(r["url"]).name: dict(r) for r in db.execute("SELECT * FROM items")}
    for row in found.values():
        row["thumbnails"] = json.loads(row["thumbnails"]) if row["thumbnails"] else []
    return found


def thumb(out: Path, row: dict) -> Image.Image:
    im = Image.open(out / row["thumbnails"][0]["path"])
    im.load()
    return im


# -- AVIF -----------------------------------------------------------------------------------------


def test_avif_is_allowed_by_default() -> None:
    assert "AVIF" in DEFAULT_FORMATS
    assert "AVIF" in ProcessOptions().formats


def test_avif_photo_processed(tmp_path: Path) -> None:
    source = coffee()
    info = process_image(avif(source), options=ProcessOptions(thumb_format="png"), store=Store(tmp_path))
    assert (info.format, info.width, info.height, info.mode) == ("AVIF", 600, 400, "RGB")
    with Image.open(tmp_path / info.thumbnails[0].path) as im:
        assert im.size == (256, 171)
        assert mean_diff(im.convert("RGB"), reference(source)) < 6
    assert info.original_path is not None and info.original_path.endswith(".avif")


def test_thumb_format_avif_names_its_quality() -> None:
    options = ProcessOptions(thumb_format="AVIF", thumb_quality=60)
    assert (options.thumb_format, options.thumb_ext, options.thumb_variant) == ("avif", "avif", "q60")
    store = Store(Path("/nowhere"))
    names = {
        store.thumb_relpath("ab" + "0" * 62, 256, o.thumb_ext, variant=o.thumb_variant)
        for o in (options, ProcessOptions(thumb_format="avif"), ProcessOptions(thumb_format="webp"))
    }
    assert len(names) == 3


def test_thumb_format_avif_writes_avif(tmp_path: Path) -> None:
    source = chelsea()
    options = ProcessOptions(thumb_format="avif", thumb_quality=70, sizes=(256, 128))
    info = process_image(encode(source, "JPEG", quality=92), options=options, store=Store(tmp_path))
    assert [t.path.split("/")[1] for t in info.thumbnails] == ["256-q70", "128-q70"]
    for t in info.thumbnails:
        assert t.path.endswith(".avif")
        with Image.open(tmp_path / t.path) as im:
            assert im.format == "AVIF" and im.size == (t.width, t.height)
            assert mean_diff(im.convert("RGB"), reference(source, t.size)) < 8


# -- HEIC / HEIF ----------------------------------------------------------------------------------


def test_heif_is_allowed_by_default_with_the_extra(tmp_path: Path) -> None:
    source = astronaut()
    info = process_image(heic(source), options=ProcessOptions(thumb_format="png"), store=Store(tmp_path))
    assert (info.format, info.width, info.height) == ("HEIF", 512, 512)
    with Image.open(tmp_path / info.thumbnails[0].path) as im:
        assert mean_diff(im.convert("RGB"), reference(source)) < 6
    assert info.original_path is not None and info.original_path.endswith(".heic")


def test_heic_with_generic_major_brand(tmp_path: Path) -> None:
    # Some cameras write major brand 'mif1' and list 'heic' among the compatible brands;
    # Pillow's own AVIF plugin also claims 'mif1' files, then steps aside.
    data = bytearray(heic(chelsea()))
    assert data[8:12] == b"heic"
    data[8:12] = b"mif1"
    info = process_image(bytes(data), options=ProcessOptions(thumb_format="png"), store=Store(tmp_path))
    assert info.format == "HEIF"


@pytest.mark.parametrize("make", [avif, heic], ids=["AVIF", "HEIF"])
def test_no_thumbnails_reads_the_shown_size_from_the_header(tmp_path: Path, make) -> None:
    data = make(chelsea(), exif=exif_orientation(6))
    options = ProcessOptions(thumbnails=False)
    info = process_image(data, options=options, store=Store(tmp_path))
    assert (info.width, info.height, info.thumbnails, info.phash) == (300, 451, (), None)
    assert (tmp_path / info.original_path).read_bytes() == data


# -- narrowing the allowlist ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name"), [(lambda: avif(coffee()), "AVIF"), (lambda: heic(coffee()), "HEIF")]
)
def test_narrowed_out_format_is_a_clear_row_error(tmp_path: Path, make, name: str) -> None:
    options = ProcessOptions(formats=("JPEG", "PNG"))
    with pytest.raises(ItemError) as info:
        process_image(make(), options=options, store=Store(tmp_path))
    assert info.value.error_class is ErrorClass.NOT_IMAGE
    assert info.value.message == f"{name} image; format not allowed (allowed: JPEG, PNG)"


# -- pixel bombs and cut files, in process (memory is measured here) ------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
# Over our limit; over twice Pillow's (its own error); over libavif's and libheif's own limits
# (the decoders refuse the header, the declared size still names the bomb).
@pytest.mark.parametrize(("width", "height"), [(10000, 10000), (30000, 30000), (60000, 60000)])
def test_pixel_bomb_fails_before_allocating(tmp_path: Path, fmt: str, width: int, height: int) -> None:
    # Even sides: an odd one makes the HEVC encoder pad and crop ('clap'), and the shown size
    # is the crop's.
    cat = chelsea().resize((450, 300))
    small = avif(cat) if fmt == "AVIF" else heic(cat)
    data = declaring(small, width, height)
    before = Image.core.get_stats()
    with pytest.raises(ItemError) as info:
        process_image(data, options=ProcessOptions(), store=Store(tmp_path))
    after = Image.core.get_stats()
    assert info.value.error_class is ErrorClass.TOO_MANY_PIXELS, info.value.message
    assert str(width * height) in info.value.message
    blocks = sum(after[k] - before[k] for k in ("allocated_blocks", "reused_blocks"))
    assert blocks * Image.core.get_block_size() <= 32 * 2**20, blocks
    assert not (tmp_path / "thumbs").exists()


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_cut_file_is_truncated(tmp_path: Path, fmt: str, cut: float) -> None:
    data = avif(coffee()) if fmt == "AVIF" else heic(coffee())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ItemError) as info:
            process_image(data[: int(len(data) * cut)], options=ProcessOptions(), store=Store(tmp_path))
    assert info.value.error_class is ErrorClass.TRUNCATED, info.value.message
    assert fmt in info.value.message


# -- the real CLI: every case of every new decoder --------------------------------------------------


def _corpus(folder: Path) -> None:
    folder.mkdir()
    cat, cup = chelsea(), coffee()
    first, second = astronaut().resize((300, 300)), cup.resize((300, 300))
    files = {
        "avif_photo.avif": avif(cup),
        "avif_rot6.avif": avif(cat, exif=exif_orientation(6)),
        "avif_alpha.avif": avif(with_hole(cat)),
        "avif_anim.avif": encode(first, "AVIF", save_all=True, append_images=[second], duration=100),
        "avif_cut.avif": avif(cup)[:3000],
        "avif_bomb.avif": declaring(avif(cat), 10000, 10000),
        "heic_photo.heic": heic(cup),
        "heic_rot6.heic": heic(cat, exif=exif_orientation(6)),
        "heic_alpha.heic": heic(with_hole(cat)),
        "heic_seq.heic": heic(first, save_all=True, append_images=[second]),
        "heic_10bit.heic": heic_10bit(cup),
        "heic_cut.heic": heic(cup)[:3000],
        "heic_bomb.heic": declaring(heic(cat.resize((450, 300))), 10000, 10000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("formats") / "in"
    _corpus(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("thumb_format", ["avif", "png", "webp", "jpeg"])
def test_cli_run_over_every_case(tmp_path: Path, corpus: Path, thumb_format: str) -> None:
    out = tmp_path / "out"
    found = run_folder(corpus, out, "--thumb-format", thumb_format)
    assert len(found) == 13
    cat, cup = chelsea(), coffee()
    for prefix, fmt in (("avif", "AVIF"), ("heic", "HEIF")):
        photo = found[f"{prefix}_photo.{prefix}"]
        assert (photo["status"], photo["format"], photo["width"], photo["height"]) == ("ok", fmt, 600, 400)
        assert mean_diff(thumb(out, photo).convert("RGB"), reference(cup)) < 8

        # EXIF orientation 6: stored landscape, shown portrait; the thumbnail is upright.
        rot = found[f"{prefix}_rot6.{prefix}"]
        assert (rot["status"], rot["width"], rot["height"]) == ("ok", 300, 451), rot
        upright = thumb(out, rot).convert("RGB")
        expected = reference(cat.transpose(Image.Transpose.ROTATE_270))
        assert mean_diff(upright, expected) < 8
        assert mean_diff(upright.resize(expected.size[::-1]), reference(cat).resize(expected.size[::-1])) > 20

        # Alpha: kept by formats that have it, flattened on white for JPEG.
        alpha = found[f"{prefix}_alpha.{prefix}"]
        assert alpha["status"] == "ok", alpha
        im = thumb(out, alpha)
        middle = (im.width // 2, im.height // 2)
        if thumb_format == "jpeg":
            assert im.mode == "RGB" and min(im.getpixel(middle)) > 240  # white where transparent
        else:
            assert im.mode == "RGBA"
            assert im.getpixel(middle)[3] == 0 and im.getpixel((im.width // 2, 5))[3] == 255

        for bad, error_class in (("cut", "truncated"), ("bomb", "too_many_pixels")):
            row = found[f"{prefix}_{bad}.{prefix}"]
            assert (row["status"], row["error_class"]) == ("failed", error_class), row
            assert (fmt if bad == "cut" else "10000x10000") in row["error_message"], row

    # Animation / image sequence: the first frame (the astronaut), never the second.
    for name in ("avif_anim.avif", "heic_seq.heic"):
        row = found[name]
        assert (row["status"], row["n_frames"], row["width"]) == ("ok", 2, 300), row
        im = thumb(out, row).convert("RGB")
        assert mean_diff(im, reference(astronaut().resize((300, 300)))) < 10
        assert mean_diff(im, reference(cup.resize((300, 300)))) > 30

    # 10 bits per sample: scaled to 8, not clipped (a clipped picture would be near white).
    deep = found["heic_10bit.heic"]
    assert (deep["status"], deep["width"]) == ("ok", 600), deep
    assert mean_diff(thumb(out, deep).convert("RGB"), reference(cup)) < 8

    ext = {"jpeg": "jpg"}.get(thumb_format, thumb_format)
    assert all(t["path"].endswith(f".{ext}") for r in found.values() for t in r["thumbnails"])


@pytest.mark.slow
def test_cli_avif_thumbnails_dedup(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "a.avif").write_bytes(avif(coffee()))
    (folder / "b.jpg").write_bytes(encode(coffee(), "JPEG", quality=90))  # same picture
    (folder / "c.heic").write_bytes(heic(chelsea()))
    found = run_folder(folder, out, "--thumb-format", "avif", "--thumb-quality", "60")
    assert {r["status"] for r in found.values()} == {"ok"}
    assert all(t["path"].startswith("thumbs/256-q60/") for r in found.values() for t in r["thumbnails"])
    result = CliRunner().invoke(main, ["dedup", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 groups, 1 duplicates (0 exact)" in result.output


# -- without the heif extra -------------------------------------------------------------------------


@pytest.mark.slow
def test_without_the_heif_extra_a_heic_row_names_the_extra(tmp_path: Path) -> None:
    # An interpreter in which `import pillow_heif` fails, as where the extra is not installed.
    hide = tmp_path / "hide"
    (hide / "pillow_heif").mkdir(parents=True)
    (hide / "pillow_heif" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cat.heic").write_bytes(heic(chelsea()))
    generic = bytearray(heic(coffee()))
    generic[8:12] = b"mif1"
    (folder / "cup.heic").write_bytes(bytes(generic))
    (folder / "cup.avif").write_bytes(avif(coffee()))
    repo = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(repo), os.environ.get("PYTHONPATH", "")])}
    found = run_folder(folder, tmp_path / "out", env=env)
    for name in ("cat.heic", "cup.heic"):
        row = found[name]
        assert (row["status"], row["error_class"]) == ("failed", "not_image"), row
        assert row["error_message"] == f"HEIF image; no decoder installed: {HEIF_HINT}"
    assert found["cup.avif"]["status"] == "ok"  # AVIF needs no extra


# -- --formats --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_formats_narrows_the_allowlist(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.avif").write_bytes(avif(coffee()))
    (folder / "b.heic").write_bytes(heic(coffee()))
    (folder / "c.jpg").write_bytes(encode(coffee(), "JPEG"))
    found = run_folder(folder, tmp_path / "out", "--formats", "heic,jpg")
    assert (found["c.jpg"]["status"], found["b.heic"]["status"]) == ("ok", "ok")
    row = found["a.avif"]
    assert (row["status"], row["error_class"]) == ("failed", "not_image")
    assert row["error_message"] == "AVIF image; format not allowed (allowed: JPEG, HEIF)"


def test_jpeg_xl_is_refused_by_name(tmp_path: Path) -> None:
    # Not decoded (README, "Formats"): the row says what it is.
    codestream = b"\xff\x0a" + bytes(range(64))
    with pytest.raises(ItemError) as info:
        process_image(codestream, options=ProcessOptions(), store=Store(tmp_path))
    assert info.value.error_class is ErrorClass.NOT_IMAGE
    assert info.value.message.startswith("JPEG XL image; format not allowed (allowed: JPEG, PNG")


def test_cli_formats_rejects_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--formats", "jpeg,jp2x"])
    assert result.exit_code == 2
    assert "unknown format 'JP2X'" in result.output


def test_formats_changes_the_fingerprint() -> None:
    from pipeline.config import RunConfig

    narrowed = RunConfig(out="x", process=dataclasses.replace(ProcessOptions(), formats=("JPEG",)))
    assert narrowed.fingerprint_options()["formats"] == ["JPEG"]
    assert RunConfig(out="x").fingerprint_options()["formats"] == list(DEFAULT_FORMATS)


@pytest.mark.slow
def test_a_run_made_before_avif_resumes_only_with_its_formats(tmp_path: Path) -> None:
    # Adding AVIF and HEIF to the defaults changes results, so a run started with the older
    # default list does not silently resume with the new one; --formats gives the old list.
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "a.avif").write_bytes(avif(coffee()))
    old_default = "mpo,jpeg,png,gif,webp,bmp,tiff"  # any order: stored in the default's order
    found = run_folder(folder, out, "--formats", old_default)
    assert found["a.avif"]["error_class"] == "not_image"
    with sqlite3.connect(out / "catalog.sqlite") as db:
        (stored,) = db.execute("SELECT value FROM meta WHERE name = 'fingerprint'").fetchone()
    assert json.loads(stored)["options"]["formats"] == ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"]
    refused = CliRunner().invoke(main, ["run", str(folder), "--out", str(out), "--procs", "1", "-q"])
    assert refused.exit_code == 2 and "options.formats" in refused.output, refused.output
    resumed = CliRunner().invoke(main, ["run", str(folder), "--out", str(out), "--procs", "1", "-q", "--formats", old_default])
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.slow
def test_avif_and_heic_urls_from_a_server(tmp_path: Path, server) -> None:
    bodies = {
        "a.avif": (avif(coffee()), "image/avif"),
        "b.heic": (heic(chelsea(), exif=exif_orientation(6)), "image/heic"),
        "c": (avif(with_hole(chelsea())), "application/octet-stream"),  # no extension, no type: the bytes decide
    }
    for name, (body, mime) in bodies.items():
        server.expect_request(f"/{name}").respond_with_data(body, content_type=mime)
    manifest = tmp_path / "urls.txt"
    manifest.write_text("".join(server.url_for(f"/{name}") + "\n" for name in bodies))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(manifest), "--out", str(out), "--procs", "1", "-q", "--allow-private", "--thumb-format", "avif"]
    )
    assert result.exit_code == 0, result.output
    found = rows(out)
    assert {name: (r["status"], r["format"], r["mime"]) for name, r in found.items()} == {
        "a.avif": ("ok", "AVIF", "image/avif"),
        "b.heic": ("ok", "HEIF", "image/heic"),
        "c": ("ok", "AVIF", "application/octet-stream"),
    }
    assert (found["b.heic"]["width"], found["b.heic"]["height"]) == (300, 451)
    assert thumb(out, found["c"]).mode == "RGBA"
