"""The CPU stage, on real image bytes made with Pillow; imagehash is the independent reference."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from pipeline.config import ProcessOptions
from pipeline.errors import ErrorClass, ItemError
from pipeline.image.fit import fit_size
from pipeline.image.hashes import HASH_SIZE, dhash, phash
from pipeline.image.process import process_image
from pipeline.models import ImageInfo
from pipeline.store.local import Store

pytestmark = pytest.mark.timeout(60)

PNG_OPTS = ProcessOptions(sizes=(256,), thumb_format="png", keep_originals=False)


# -- image makers ----------------------------------------------------------------------------


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Photo-like RGB: gradients, a few shapes and noise; different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            x / width * rng.uniform(80, 255),
            y / height * rng.uniform(80, 255),
            (x + y) / (width + height) * rng.uniform(80, 255),
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, max(1, width - 8))), int(rng.integers(0, max(1, height - 8)))
        x1, y1 = x0 + int(rng.integers(4, max(5, width // 2))), y0 + int(rng.integers(4, max(5, height // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=color)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=color)
    return im


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def run(data: bytes, tmp_path: Path, options: ProcessOptions = PNG_OPTS) -> ImageInfo:
    return process_image(data, options=options, store=Store(tmp_path))


def open_thumb(tmp_path: Path, info: ImageInfo, index: int = 0) -> Image.Image:
    im = Image.open(tmp_path / info.thumbnails[index].path)
    im.load()
    return im


def item_error(data: bytes, tmp_path: Path, options: ProcessOptions = PNG_OPTS) -> ItemError:
    with pytest.raises(ItemError) as info:
        run(data, tmp_path, options)
    return info.value


def bits_apart(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


# -- hashes: golden values against imagehash -------------------------------------------------


def _hash_cases() -> list[tuple[str, Image.Image]]:
    cases: list[tuple[str, Image.Image]] = []
    for seed, (w, h) in enumerate([(256, 192), (192, 256), (256, 256), (256, 40), (33, 256), (97, 61)]):
        cases.append((f"photo{seed}", photo(w, h, seed)))
    cases.append(("photo_L", photo(256, 170, 11).convert("L")))
    cases.append(("photo_RGBA", photo(200, 256, 12).convert("RGBA")))
    rng = np.random.default_rng(7)
    cases.append(("noise", Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "RGB")))
    cases.append(("noise_L", Image.fromarray(rng.integers(0, 256, (64, 200), dtype=np.uint8), "L")))
    cases.append(("flat_gray", Image.new("L", (256, 256), 128)))
    cases.append(("flat_red", Image.new("RGB", (100, 50), (255, 0, 0))))
    cases.append(("gradient_lr", Image.linear_gradient("L").rotate(90).resize((256, 128))))
    cases.append(("gradient_tb", Image.linear_gradient("L")))
    cases.append(("radial", Image.radial_gradient("L")))
    checker = np.indices((256, 256)).sum(axis=0) // 32 % 2 * 255
    cases.append(("checker", Image.fromarray(checker.astype(np.uint8), "L")))
    stripes = np.tile((np.arange(256) // 16 % 2 * 255).astype(np.uint8), (200, 1))
    cases.append(("stripes", Image.fromarray(stripes, "L")))
    circle = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(circle).ellipse((64, 64, 192, 192), fill="black")
    cases.append(("circle", circle))
    cases.append(("tiny", photo(24, 20, 3)))
    cases.append(("photo_big", photo(640, 480, 21)))
    return cases


@pytest.mark.parametrize(("name", "image"), _hash_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_hashes_equal_imagehash(name: str, image: Image.Image) -> None:
    assert dhash(image) == str(imagehash.dhash(image))
    assert phash(image) == str(imagehash.phash(image))


def test_hashes_are_16_hex_digits_and_constant() -> None:
    flat = Image.new("L", (64, 64), 77)
    assert dhash(flat) == "0000000000000000"
    assert phash(flat) == "8000000000000000"  # only the DC coefficient beats a zero median
    left_to_right = Image.linear_gradient("L").rotate(90)  # brighter to the right
    assert dhash(left_to_right) == "ffffffffffffffff"


def test_process_hashes_the_256_step(tmp_path: Path) -> None:
    im = photo(800, 600, 5)
    info = run(encode(im, "PNG"), tmp_path, dataclasses.replace(PNG_OPTS, sizes=(1024, 512, 128)))
    reference = im.resize(fit_size(800, 600, HASH_SIZE), Image.Resampling.BICUBIC, reducing_gap=2.0)
    assert bits_apart(info.dhash, str(imagehash.dhash(reference))) <= 2
    assert bits_apart(info.phash, str(imagehash.phash(reference))) <= 2


def test_hashes_survive_resize_and_recompression_not_rotation(tmp_path: Path) -> None:
    im = photo(800, 600, 9)
    original = run(encode(im, "JPEG", quality=92), tmp_path / "a")
    near = run(encode(im.resize((560, 420), Image.Resampling.LANCZOS), "JPEG", quality=60), tmp_path / "b")
    rotated = run(encode(im.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92), tmp_path / "c")
    assert bits_apart(original.dhash, near.dhash) <= 6
    assert bits_apart(original.phash, near.phash) <= 6
    assert bits_apart(original.dhash, rotated.dhash) >= 16
    assert bits_apart(original.phash, rotated.phash) >= 16


# -- thumbnails ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((1000, 600), 256, (256, 154)),
        ((300, 1200), 256, (64, 256)),
        ((100, 80), 256, (100, 80)),
        ((256, 1), 16, (16, 1)),
    ],
)
def test_fit_size_matches_pillow_thumbnail(
    size: tuple[int, int], box: int, expected: tuple[int, int]
) -> None:
    assert fit_size(*size, box) == expected
    im = Image.new("L", size)
    im.thumbnail((box, box))
    assert im.size == expected


def test_two_sizes_from_one_call_never_upscaled(tmp_path: Path) -> None:
    data = encode(photo(1000, 600, 1), "JPEG", quality=90)
    info = run(data, tmp_path, ProcessOptions(sizes=(256, 2048, 1024), keep_originals=False))
    assert [t.size for t in info.thumbnails] == [2048, 1024, 256]
    assert [(t.width, t.height) for t in info.thumbnails] == [(1000, 600), (1000, 600), (256, 154)]
    for index, thumb in enumerate(info.thumbnails):
        assert thumb.path == f"thumbs/{thumb.size}-q85/{info.sha256[:2]}/{info.sha256}.jpg"
        assert open_thumb(tmp_path, info, index).size == (thumb.width, thumb.height)
    assert (info.width, info.height, info.format, info.mode) == (1000, 600, "JPEG", "RGB")


def test_jpeg_draft_thumbnail_matches_full_decode(tmp_path: Path) -> None:
    im = photo(1600, 1200, 2)
    data = encode(im, "JPEG", quality=95)
    info = run(data, tmp_path)
    reference = Image.open(io.BytesIO(data)).convert("RGB")
    reference = reference.resize((256, 192), Image.Resampling.LANCZOS)
    thumb = open_thumb(tmp_path, info)
    assert thumb.size == (256, 192)
    assert mean_abs_diff(thumb, reference) < 3.0


def test_portrait_and_small_images(tmp_path: Path) -> None:
    tall = run(encode(photo(300, 1200, 3), "PNG"), tmp_path)
    assert (tall.thumbnails[0].width, tall.thumbnails[0].height) == (64, 256)
    small = run(encode(photo(120, 90, 4), "PNG"), tmp_path)
    assert (small.thumbnails[0].width, small.thumbnails[0].height) == (120, 90)


def test_exif_orientation_applied_like_exif_transpose(tmp_path: Path) -> None:
    im = photo(640, 480, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait (rotate 90° clockwise)
    data = encode(im, "JPEG", quality=95, exif=exif.tobytes())
    info = run(data, tmp_path)
    assert (info.width, info.height) == (480, 640)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    reference.thumbnail((256, 256), Image.Resampling.LANCZOS)
    thumb = open_thumb(tmp_path, info)
    assert thumb.size == reference.size == (192, 256)
    assert mean_abs_diff(thumb, reference) < 3.0
    assert 0x0112 not in thumb.getexif()  # already applied: viewers must not rotate again


def test_cmyk_jpeg(tmp_path: Path) -> None:
    data = encode(photo(400, 300, 7).convert("CMYK"), "JPEG", quality=90)
    info = run(data, tmp_path, dataclasses.replace(PNG_OPTS, keep_originals=True))
    assert (info.format, info.mode) == ("JPEG", "CMYK")
    thumb = open_thumb(tmp_path, info)
    assert thumb.mode == "RGB"
    reference = photo(400, 300, 7).convert("CMYK").convert("RGB").resize(thumb.size, Image.Resampling.LANCZOS)
    assert mean_abs_diff(thumb, reference) < 6.0
    assert info.original_path == f"originals/{info.sha256[:2]}/{info.sha256}.jpg"
    assert (tmp_path / info.original_path).read_bytes() == data


def _palette_with_hole() -> bytes:
    im = photo(300, 200, 8).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pixels = np.asarray(im).copy()
    pixels[:50, :50] = 63  # top-left corner uses the transparent index
    out = Image.fromarray(pixels, "P")
    out.putpalette(im.getpalette())
    return encode(out, "PNG", transparency=63)


def test_palette_transparency_flattened_on_white_for_jpeg(tmp_path: Path) -> None:
    info = run(_palette_with_hole(), tmp_path, ProcessOptions(sizes=(256,), thumb_format="jpeg"))
    assert (info.format, info.mode) == ("PNG", "P")
    thumb = open_thumb(tmp_path, info).convert("RGB")
    assert thumb.size == (256, 171)
    assert min(thumb.getpixel((10, 10))) >= 245  # transparent corner: white, not black
    assert info.original_path is not None and info.original_path.endswith(".png")


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_palette_transparency_kept_for_png_and_webp(tmp_path: Path, fmt: str) -> None:
    info = run(_palette_with_hole(), tmp_path, dataclasses.replace(PNG_OPTS, thumb_format=fmt))
    thumb = open_thumb(tmp_path, info)
    assert thumb.mode == "RGBA"
    assert thumb.getpixel((10, 10))[3] == 0
    assert thumb.getpixel((200, 150))[3] == 255


def test_hashes_do_not_depend_on_thumb_format(tmp_path: Path) -> None:
    data = _palette_with_hole()
    as_jpeg = run(data, tmp_path / "j", ProcessOptions(sizes=(256,), thumb_format="jpeg"))
    as_png = run(data, tmp_path / "p", PNG_OPTS)
    assert (as_jpeg.dhash, as_jpeg.phash) == (as_png.dhash, as_png.phash)


def test_la_png(tmp_path: Path) -> None:
    im = Image.merge("LA", (photo(300, 300, 9).convert("L"), Image.linear_gradient("L").resize((300, 300))))
    info = run(encode(im, "PNG"), tmp_path)
    assert info.mode == "LA"
    thumb = open_thumb(tmp_path, info)
    assert thumb.mode == "RGBA" and thumb.size == (256, 256)
    assert thumb.getpixel((128, 0))[3] < 10 and thumb.getpixel((128, 255))[3] > 245


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    info = run(encode(im, "PNG"), tmp_path)
    assert info.mode.startswith("I")
    thumb = np.asarray(open_thumb(tmp_path, info))
    assert thumb.min() <= 5 and thumb.max() >= 250
    assert 100 < thumb.mean() < 155  # a ramp averages mid-gray; clipping gives ~255


def test_one_bit_png(tmp_path: Path) -> None:
    im = photo(300, 200, 10).convert("1")
    info = run(encode(im, "PNG"), tmp_path)
    assert info.mode == "1"
    thumb = open_thumb(tmp_path, info)
    assert thumb.mode == "L" and thumb.size == (256, 171)
    assert len(set(np.asarray(thumb).ravel().tolist())) > 2  # resized with a real filter


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (120, 80), color) for color in ("red", "lime", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    info = run(data, tmp_path)
    assert (info.format, info.n_frames, info.width, info.height) == ("GIF", 3, 120, 80)
    r, g, b = open_thumb(tmp_path, info).convert("RGB").getpixel((60, 40))
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_animated_webp_and_apng(tmp_path: Path, fmt: str) -> None:
    frames = [Image.new("RGB", (64, 48), color) for color in ("red", "lime", "blue")]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    info = run(data, tmp_path)
    assert (info.format, info.n_frames) == (fmt, 3)


def test_originals_kept_or_not(tmp_path: Path) -> None:
    data = encode(photo(200, 100, 12), "WEBP", quality=80)
    kept = run(data, tmp_path / "k", dataclasses.replace(PNG_OPTS, keep_originals=True))
    assert kept.original_path == f"originals/{kept.sha256[:2]}/{kept.sha256}.webp"
    assert (tmp_path / "k" / kept.original_path).read_bytes() == data
    dropped = run(data, tmp_path / "d")
    assert dropped.original_path is None
    assert not (tmp_path / "d" / "originals").exists()


def test_existing_thumbnail_is_not_rewritten(tmp_path: Path) -> None:
    data = encode(photo(500, 400, 13), "JPEG")
    first = run(data, tmp_path)
    before = (tmp_path / first.thumbnails[0].path).stat()
    second = run(data, tmp_path)
    after = (tmp_path / first.thumbnails[0].path).stat()
    assert first.thumbnails == second.thumbnails
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert not any((tmp_path / ".tmp").iterdir())


def test_threads_give_the_same_results(tmp_path: Path) -> None:
    blobs = [encode(photo(400 + 40 * i, 300, 20 + i), "JPEG") for i in range(6)]
    opts = ProcessOptions(sizes=(512, 128), keep_originals=True)
    serial = [run(b, tmp_path / "serial", opts) for b in blobs]
    store = Store(tmp_path / "threads")
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda b: process_image(b, options=opts, store=store), blobs * 2))
    strip = [dataclasses.replace(i, elapsed_ms=0.0) for i in serial]
    assert [dataclasses.replace(i, elapsed_ms=0.0) for i in threaded] == strip * 2


# -- failures --------------------------------------------------------------------------------


def test_empty_body(tmp_path: Path) -> None:
    error = item_error(b"", tmp_path)
    assert (error.error_class, error.message) == (ErrorClass.NOT_IMAGE, "empty body")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML document"),
        (b"\n  <html><head><title>Login</title>", "HTML document"),
        (
            bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
            "not a recognised image format",
        ),
        (b"%PDF-1.7\n...", "PDF"),
        (b'{"error": "not found"}', "JSON"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
)
def test_not_an_image(tmp_path: Path, data: bytes, words: str) -> None:
    error = item_error(data, tmp_path)
    assert error.error_class is ErrorClass.NOT_IMAGE
    assert words in error.message
    assert not (tmp_path / "thumbs").exists()


def test_format_outside_allowlist(tmp_path: Path) -> None:
    data = encode(photo(64, 64, 14), "BMP")
    error = item_error(data, tmp_path, dataclasses.replace(PNG_OPTS, formats=("JPEG",)))
    assert error.error_class is ErrorClass.NOT_IMAGE
    assert "BMP" in error.message and "not allowed" in error.message
    assert run(data, tmp_path).format == "BMP"  # allowed by default


def test_unknown_format_names_are_ignored(tmp_path: Path) -> None:
    data = encode(photo(64, 64, 14), "PNG")
    assert run(data, tmp_path, dataclasses.replace(PNG_OPTS, formats=("NOPE", "PNG"))).format == "PNG"


@pytest.mark.parametrize(
    ("fmt", "cut"), [("JPEG", 0.6), ("JPEG", 0.98), ("PNG", 0.5), ("GIF", 0.7), ("WEBP", 0.8)]
)
def test_truncated(tmp_path: Path, fmt: str, cut: float) -> None:
    data = encode(photo(400, 300, 15), fmt)
    error = item_error(data[: int(len(data) * cut)], tmp_path)
    assert error.error_class is ErrorClass.TRUNCATED, error.message
    assert not (tmp_path / "thumbs").exists()


def test_jpeg_cut_inside_its_header_is_truncated(tmp_path: Path) -> None:
    data = encode(photo(400, 300, 15), "JPEG")
    assert item_error(data[:100], tmp_path).error_class is ErrorClass.TRUNCATED


def test_corrupt_png_is_decode_error(tmp_path: Path) -> None:
    data = bytearray(encode(photo(200, 100, 16), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 64] = bytes(64)  # zlib stream header and first blocks destroyed
    error = item_error(bytes(data), tmp_path)
    assert error.error_class is ErrorClass.DECODE_ERROR, error.message


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking grayscale PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest re-enables it
@pytest.mark.parametrize(("width", "height"), [(30000, 30000), (10000, 10000)])
def test_pixel_bomb_fails_fast(tmp_path: Path, width: int, height: int) -> None:
    # 30000² is over twice Pillow's limit (its own error); 10000² only over ours.
    data = _png_declaring(width, height)
    assert len(data) < 200
    before = Image.core.get_stats()
    error = item_error(data, tmp_path)
    after = Image.core.get_stats()
    assert error.error_class is ErrorClass.TOO_MANY_PIXELS
    # No 100-900 MB pixel buffer was made: Pillow allocates an image's memory in blocks of
    # get_block_size() (16 MB) when the image is created, and counts every block it hands out.
    blocks = sum(after[k] - before[k] for k in ("allocated_blocks", "reused_blocks"))
    assert blocks * Image.core.get_block_size() <= 32 * 2**20, blocks


def test_pixel_bomb_when_warnings_are_errors(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under python -W error
        error = item_error(_png_declaring(10000, 10000), tmp_path)
    assert error.error_class is ErrorClass.TOO_MANY_PIXELS


def test_pixel_limit_names_the_dimensions(tmp_path: Path) -> None:
    data = encode(photo(300, 200, 17), "PNG")
    error = item_error(data, tmp_path, dataclasses.replace(PNG_OPTS, max_pixels=50_000))
    assert error.error_class is ErrorClass.TOO_MANY_PIXELS
    assert "300x200" in error.message and "50000" in error.message
    assert run(data, tmp_path, dataclasses.replace(PNG_OPTS, max_pixels=60_000)).width == 300


def test_raised_pixel_limit_is_not_capped_by_pillow(tmp_path: Path) -> None:
    # Over twice Pillow's default limit is Pillow's own error unless we lift it.
    width, height = 13500, 13500
    data = encode(Image.new("L", (width, height)), "PNG")
    info = run(data, tmp_path, dataclasses.replace(PNG_OPTS, max_pixels=200_000_000))
    assert (info.width, info.height) == (width, height)
