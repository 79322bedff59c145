"""The labelled set of bench/dedup_quality.py: bases, their copies, and hard negatives.

Bases: 40% real photographs (up to 64: a corner window, 55% of the side, of one of 16
scikit-image photographs, scaled to 640x480 with grain; the windows of one source overlap
by ~10% per side, so they are different pictures), the rest cycling through photo-like,
document-like, product-shot and screenshot-like synthetic pictures. Each base gets
``copies`` of the ``TRANSFORMS`` (a rotating window, so each is used equally often) and a
byte-identical copy, and one hard negative: a different picture that shares what makes
look-alikes look alike, with two copies (resize50, grayscale):

- real photographs: a burst shot, the frame moved by 12% (even bases) or the same frame with
  an object moved (two 28% patches swapped; odd bases);
- photo-like: the same sky, tint and half of the shapes;
- documents: one template (margins, line grid, figure) with other text;
- products: one catalogue (background, colour) with another object;
- screenshots: one UI (title bar, sidebar, toolbar, colours) with other content.
"""

from __future__ import annotations

import functools
import io
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

W, H = 640, 480
# Real photographs shipped in scikit-image's wheel (no download); the last 7 are grayscale.
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle", "camera", "coins", "moon", "brick", "grass", "gravel",
    "clock", "cell",
)  # fmt: skip
WINDOW = 0.55  # of the source's side; 4 corner windows per source
SHIFT = 0.12  # burst shot: the window moved by this much of its size
GRAIN = 5.0


@functools.cache
def _source(name: str) -> np.ndarray:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    if isinstance(pixels, tuple):  # stereo pairs
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3].astype(np.uint8))


def _window(
    src: np.ndarray, corner: int, shift: tuple[float, float], rng: np.random.Generator
) -> Image.Image:
    h, w = src.shape[:2]
    side = min(w * WINDOW, h * WINDOW * 4 / 3)  # a 4:3 window
    ww, wh = int(side), int(side * 3 / 4)
    x0 = 0 if corner % 2 == 0 else w - ww
    y0 = 0 if corner < 2 else h - wh
    # A shift moves the frame into the picture (away from the corner it sits in).
    x0 += int(shift[0] * ww) * (1 if corner % 2 == 0 else -1)
    y0 += int(shift[1] * wh) * (1 if corner < 2 else -1)
    window = Image.fromarray(src[y0 : y0 + wh, x0 : x0 + ww]).resize((W, H), Image.Resampling.LANCZOS)
    big = np.asarray(window, dtype=np.float32)
    grain = rng.normal(0.0, GRAIN, size=(H, W, 1)).astype(np.float32)
    return Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8))


def _real(b: int, seed: int) -> tuple[Image.Image, Image.Image, str]:
    """(base, burst-like hard negative, its kind) for the ``b``-th real photograph."""
    src = _source(PHOTOS[b % len(PHOTOS)])
    corner = (b // len(PHOTOS) + seed) % 4
    rng = np.random.default_rng(seed * 7919 + b)
    base = _window(src, corner, (0.0, 0.0), rng)
    if b % 2 == 0:
        dx, dy = [(SHIFT, 0.0), (0.0, SHIFT), (SHIFT, SHIFT)][b % 3]
        return base, _window(src, corner, (dx, dy), np.random.default_rng(seed * 7919 + b + 1)), "burst_shift"
    moved = base.copy()
    pw, ph = int(W * 0.28), int(H * 0.28)
    r = random.Random(seed * 31 + b)
    a = (r.randrange(0, W // 2 - pw), r.randrange(0, H - ph))
    c = (r.randrange(W // 2, W - pw), r.randrange(0, H - ph))
    pa, pc = base.crop((*a, a[0] + pw, a[1] + ph)), base.crop((*c, c[0] + pw, c[1] + ph))
    moved.paste(pc, a)
    moved.paste(pa, c)
    return base, moved, "burst_object"


def _photo(own: random.Random, layout: random.Random) -> Image.Image:
    """Gradient sky, tint, 14 shapes and noise; the sky, tint and first 7 shapes come from ``layout``."""
    im = Image.linear_gradient("L").rotate(layout.choice([0, 90, 180, 270])).resize((W, H)).convert("RGB")
    im = Image.blend(im, Image.new("RGB", (W, H), tuple(layout.randrange(256) for _ in range(3))), 0.5)
    draw = ImageDraw.Draw(im)
    for k in range(14):
        r = layout if k < 7 else own
        x0, y0 = r.randrange(W), r.randrange(H)
        x1, y1 = x0 + r.randrange(20, W // 2), y0 + r.randrange(20, H // 2)
        colour = tuple(r.randrange(256) for _ in range(3))
        (draw.ellipse if r.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    # Seeded noise (Image.effect_noise draws from C's rand(), so reruns differed).
    noise = np.random.default_rng(own.getrandbits(32)).normal(128.0, 20.0, (H, W))
    return Image.blend(im, Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).convert("RGB"), 0.12)


def _document(own: random.Random, layout: random.Random) -> Image.Image:
    """A page of text-like lines: margins, line grid and figure from ``layout``, the words not."""
    im = Image.new("RGB", (W, H), (250, 250, 248))
    draw = ImageDraw.Draw(im)
    margin, step, height = layout.randrange(30, 60), layout.randrange(18, 26), layout.randrange(8, 12)
    for y in range(margin, H - margin, step):
        x = margin + (layout.randrange(0, 40) if layout.random() < 0.2 else 0)
        while x < W - margin - 20:
            word = own.randrange(15, 80)
            draw.rectangle((x, y, min(x + word, W - margin), y + height), fill=(30, 30, 30))
            x += word + own.randrange(6, 14)
    if layout.random() < 0.5:  # a figure block
        fx, fy = layout.randrange(margin, W // 2), layout.randrange(margin, H // 2)
        draw.rectangle(
            (fx, fy, fx + W // 3, fy + H // 4), fill=tuple(layout.randrange(256) for _ in range(3))
        )
    return im


def _product(own: random.Random, layout: random.Random) -> Image.Image:
    """One object on a plain background: background and colour from ``layout``, the object not."""
    bg = tuple(230 + layout.randrange(25) for _ in range(3))
    colour = tuple(layout.randrange(200) for _ in range(3))
    im = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(im)
    cx, cy = W // 2 + own.randrange(-60, 61), H // 2 + own.randrange(-40, 41)
    w, h = own.randrange(80, 220), own.randrange(80, 200)
    shape = own.choice(["ellipse", "rectangle", "polygon"])
    if shape == "polygon":
        draw.polygon([(cx, cy - h), (cx + w, cy + h), (cx - w, cy + h)], fill=colour)
    else:
        getattr(draw, shape)((cx - w, cy - h, cx + w, cy + h), fill=colour)
    light = tuple(min(255, c + 60) for c in colour)
    for _ in range(3):  # highlights and a label
        x, y = own.randrange(cx - w // 2, cx + w // 2), own.randrange(cy - h // 2, cy + h // 2)
        draw.rectangle((x, y, x + own.randrange(10, 60), y + own.randrange(5, 25)), fill=light)
    return im


def _screenshot(own: random.Random, layout: random.Random) -> Image.Image:
    """An app window: title bar, sidebar, toolbar and colours from ``layout``; list rows, cards and text not."""
    bg = tuple(layout.randrange(235, 256) for _ in range(3))
    accent = tuple(layout.randrange(30, 200) for _ in range(3))
    im = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(im)
    bar = layout.randrange(28, 44)
    draw.rectangle((0, 0, W, bar), fill=accent)
    side = layout.randrange(120, 200)
    draw.rectangle((0, bar, side, H), fill=tuple(max(0, c - 25) for c in bg))
    for y in range(bar + 14, H - 20, 26):  # sidebar entries (the UI's)
        draw.rectangle((14, y, 14 + layout.randrange(40, side - 30), y + 9), fill=(90, 90, 90))
    draw.rectangle((side + 10, bar + 8, W - 10, bar + 34), fill=tuple(max(0, c - 12) for c in bg))
    y = bar + 48
    while y < H - 40:  # the content: cards with a thumbnail block and text lines
        ch = own.randrange(50, 110)
        draw.rectangle((side + 14, y, W - 14, y + ch), outline=(200, 200, 200), fill=(255, 255, 255))
        if own.random() < 0.6:
            tone = tuple(own.randrange(256) for _ in range(3))
            draw.rectangle((side + 22, y + 8, side + 22 + ch - 16, y + ch - 8), fill=tone)
            tx = side + 30 + ch - 16
        else:
            tx = side + 24
        for ty in range(y + 10, y + ch - 10, 14):
            draw.rectangle((tx, ty, tx + own.randrange(60, W - tx - 30), ty + 7), fill=(60, 60, 60))
        y += ch + own.randrange(8, 20)
    return im


SYNTHETIC = {"photo_like": _photo, "document": _document, "product": _product, "screenshot": _screenshot}
NEGATIVE = {"photo_like": "scene", "document": "template", "product": "catalogue", "screenshot": "ui"}

# --- transforms --------------------------------------------------------------------------


def _crop(im: Image.Image, frac: float, rng: random.Random) -> Image.Image:
    """``frac`` of each side's length cut off, split at random between its two ends."""
    dx, dy = int(im.width * frac), int(im.height * frac)
    left, top = rng.randint(0, dx), rng.randint(0, dy)
    return im.crop((left, top, im.width - (dx - left), im.height - (dy - top)))


def _crop_even(im: Image.Image, frac: float) -> Image.Image:
    """``frac`` of width and height cut off, half at each end (a centred crop)."""
    dx, dy = int(im.width * frac / 2), int(im.height * frac / 2)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


def _crop_side(im: Image.Image, frac: float, rng: random.Random) -> Image.Image:
    """``frac`` of one dimension cut off one edge (left, right, top or bottom)."""
    dx, dy = int(im.width * frac), int(im.height * frac)
    edge = rng.randrange(4)
    box = [(dx, 0, im.width, im.height), (0, 0, im.width - dx, im.height),
           (0, dy, im.width, im.height), (0, 0, im.width, im.height - dy)][edge]  # fmt: skip
    return im.crop(box)


def _rotate(im: Image.Image, degrees: float, rng: random.Random) -> Image.Image:
    """Rotated about the centre, same size, black corners (a scan or a tilted re-shoot)."""
    return im.rotate(
        rng.choice([-1, 1]) * degrees, Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0)
    )


def _straighten(im: Image.Image, degrees: float, rng: random.Random) -> Image.Image:
    """Rotated, then cropped to the largest upright rectangle without corners, as photo editors do."""
    rotated = im.rotate(rng.choice([-1, 1]) * degrees, Image.Resampling.BICUBIC, expand=False)
    a = np.radians(degrees)
    # The largest axis-aligned rectangle of the image's aspect inside the rotated one.
    k = 1.0 / (np.cos(a) + np.sin(a) * max(im.width / im.height, im.height / im.width))
    return _crop_even(rotated, 1.0 - k)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _overlay(im: Image.Image, draw_fn) -> Image.Image:  # type: ignore[no-untyped-def]
    im = im.convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw_fn(ImageDraw.Draw(layer), layer)
    return Image.alpha_composite(im, layer).convert("RGB")


def _watermark(im: Image.Image, rng: random.Random) -> Image.Image:
    """The original set's: '© stock photo', 36 px, white at 55% opacity, lower half."""
    x, y = rng.randrange(10, im.width // 2), rng.randrange(im.height // 2, im.height - 50)
    return _overlay(
        im, lambda d, _: d.text((x, y), "© stock photo", fill=(255, 255, 255, 140), font=_font(36))
    )


def _wm_text_small(im: Image.Image, rng: random.Random) -> Image.Image:
    """A small signature in a corner: 18 px, 35% opacity."""
    x, y = rng.choice([12, im.width - 170]), rng.choice([10, im.height - 30])
    return _overlay(
        im, lambda d, _: d.text((x, y), "@photographer", fill=(255, 255, 255, 90), font=_font(18))
    )


def _wm_text_large(im: Image.Image, rng: random.Random) -> Image.Image:
    """A stock-site watermark: big text across the middle, 30% opacity, tiled twice."""
    size = im.width // 9

    def draw(d: ImageDraw.ImageDraw, _: Image.Image) -> None:
        for y in (im.height // 4, im.height * 5 // 8):
            d.text((im.width // 10, y), "SAMPLE  STOCK", fill=(255, 255, 255, 80), font=_font(size))

    return _overlay(im, draw)


def _wm_logo(im: Image.Image, rng: random.Random) -> Image.Image:
    """scikit-image's logo, 15-25% of the width, in a corner, 50-90% opacity."""
    logo = Image.fromarray(_logo())
    side = int(im.width * rng.uniform(0.15, 0.25))
    logo = logo.resize((side, side), Image.Resampling.LANCZOS)
    alpha = np.asarray(logo.getchannel("A"), dtype=np.float32) * rng.uniform(0.5, 0.9)
    logo.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    x, y = rng.choice([8, im.width - side - 8]), rng.choice([8, im.height - side - 8])

    def draw(_: ImageDraw.ImageDraw, layer: Image.Image) -> None:
        layer.paste(logo, (x, y))

    return _overlay(im, draw)


@functools.cache
def _logo() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.logo())


def _wm_banner(im: Image.Image, rng: random.Random) -> Image.Image:
    """An opaque strip (10-14% of the height) at the bottom or top with a caption, as social reposts add."""
    h = int(im.height * rng.uniform(0.10, 0.14))
    y = rng.choice([0, im.height - h])

    def draw(d: ImageDraw.ImageDraw, _: Image.Image) -> None:
        d.rectangle((0, y, im.width, y + h), fill=(20, 20, 20, 230))
        d.text((12, y + h // 4), "shared via example.app", fill=(255, 255, 255, 255), font=_font(h // 2))

    return _overlay(im, draw)


def _resize(im: Image.Image, f: float) -> Image.Image:
    return im.resize((int(im.width * f), int(im.height * f)), Image.Resampling.LANCZOS)


Q90 = ("JPEG", {"quality": 90})
# name -> (group for the report, function(image, rng) -> image, file format, save params)
TRANSFORMS = {
    # the original set (issue 4)
    "resize50": ("resize", lambda im, r: _resize(im, 0.5), *Q90),
    "resize25": ("resize", lambda im, r: _resize(im, 0.25), *Q90),
    "jpeg_q30": ("encode", lambda im, r: im, "JPEG", {"quality": 30}),
    "png": ("encode", lambda im, r: im, "PNG", {}),
    "webp": ("encode", lambda im, r: im, "WEBP", {"quality": 75}),
    "crop5": ("crop", lambda im, r: _crop(im, 0.05, r), *Q90),
    "crop10": ("crop", lambda im, r: _crop(im, 0.10, r), *Q90),
    "brightness": ("colour", lambda im, r: ImageEnhance.Brightness(im).enhance(r.choice([0.75, 1.3])), *Q90),
    "contrast": ("colour", lambda im, r: ImageEnhance.Contrast(im).enhance(r.choice([0.7, 1.4])), *Q90),
    "grayscale": ("colour", lambda im, r: ImageOps.grayscale(im), *Q90),
    "watermark": ("watermark", _watermark, *Q90),
    "rotate3": ("rotate", lambda im, r: _rotate(im, 3, r), *Q90),
    # issue 13
    "rotate1": ("rotate", lambda im, r: _rotate(im, 1, r), *Q90),
    "rotate2": ("rotate", lambda im, r: _rotate(im, 2, r), *Q90),
    "rotate5": ("rotate", lambda im, r: _rotate(im, 5, r), *Q90),
    "rotate7": ("rotate", lambda im, r: _rotate(im, 7, r), *Q90),
    "straighten3": ("rotate", lambda im, r: _straighten(im, 3, r), *Q90),
    "crop5_even": ("crop", lambda im, r: _crop_even(im, 0.05), *Q90),
    "crop10_even": ("crop", lambda im, r: _crop_even(im, 0.10), *Q90),
    "crop15_even": ("crop", lambda im, r: _crop_even(im, 0.15), *Q90),
    "crop20_even": ("crop", lambda im, r: _crop_even(im, 0.20), *Q90),
    "crop5_side": ("crop", lambda im, r: _crop_side(im, 0.05, r), *Q90),
    "crop10_side": ("crop", lambda im, r: _crop_side(im, 0.10, r), *Q90),
    "crop15_side": ("crop", lambda im, r: _crop_side(im, 0.15, r), *Q90),
    "crop20_side": ("crop", lambda im, r: _crop_side(im, 0.20, r), *Q90),
    "wm_text_small": ("watermark", _wm_text_small, *Q90),
    "wm_text_large": ("watermark", _wm_text_large, *Q90),
    "wm_logo": ("watermark", _wm_logo, *Q90),
    "wm_banner": ("watermark", _wm_banner, *Q90),
    "rotate2+resize50+q60": ("combo", lambda im, r: _resize(_rotate(im, 2, r), 0.5), "JPEG", {"quality": 60}),
    "crop10_even+resize50": ("combo", lambda im, r: _resize(_crop_even(im, 0.10), 0.5), *Q90),
    "crop5_side+rotate1+webp": ("combo", lambda im, r: _rotate(_crop_side(im, 0.05, r), 1, r), "WEBP", {"quality": 70}),
    "wm_text_large+resize25+q50": ("combo", lambda im, r: _resize(_wm_text_large(im, r), 0.25), "JPEG", {"quality": 50}),
    "wm_banner+resize50": ("combo", lambda im, r: _resize(_wm_banner(im, r), 0.5), *Q90),
}  # fmt: skip
NEGATIVE_COPIES = ("resize50", "grayscale")
EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def _save(im: Image.Image, path: Path, fmt: str, params: dict) -> None:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    path.write_bytes(buffer.getvalue())


def kind_of(b: int, bases: int) -> str:
    """Real photographs take 40% of the bases (up to the 64 distinct windows); the rest cycle."""
    real = min(64, int(bases * 0.4))
    if b < real:
        return "real_photo"
    return list(SYNTHETIC)[(b - real) % len(SYNTHETIC)]


def transforms_of(b: int, copies: int) -> list[str]:
    """The ``copies`` transforms base ``b`` gets: consecutive in ``TRANSFORMS``, wrapping, so
    every transform is used equally often (every base getting all of them makes ~630
    duplicate pairs per base, each a thumbnail check: too slow for a 5-minute run)."""
    names = list(TRANSFORMS)
    if copies >= len(names):
        return names
    return [names[(b * copies + i) % len(names)] for i in range(copies)]


def generate(folder: Path, bases: int, seed: int, copies: int = 10) -> dict[str, dict[str, str]]:
    """Write the images; return {file: {"group", "base", "transform", "kind", "role"}}.

    ``role``: "original", "exact", "copy" (a transform), "negative" (a hard negative) or
    "negative_copy". ``group`` is the picture (a negative is its own picture), ``base`` the
    base it belongs to (its negative's too).
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels: dict[str, dict[str, str]] = {}
    for b in range(bases):
        kind = kind_of(b, bases)
        rng = random.Random(seed * 1_000_003 + b)
        if kind == "real_photo":
            base, negative, neg_kind = _real(b, seed)
        else:
            layout = rng.random()  # base and hard negative share it
            base = SYNTHETIC[kind](random.Random(rng.random()), random.Random(layout))
            negative = SYNTHETIC[kind](random.Random(rng.random()), random.Random(layout))
            neg_kind = NEGATIVE[kind]
        group, ngroup = f"b{b:04d}", f"b{b:04d}n"

        def label(name: str, g: str, transform: str, role: str, base: str = group, kind: str = kind) -> None:
            labels[name] = {"group": g, "base": base, "transform": transform, "kind": kind, "role": role}

        name = f"{group}_orig.jpg"
        _save(base, folder / name, "JPEG", {"quality": 90})
        label(name, group, "original", "original")
        shutil.copyfile(folder / name, folder / f"{group}_exact.jpg")
        label(f"{group}_exact.jpg", group, "exact", "exact")
        for t in transforms_of(b, copies):
            _, fn, fmt, params = TRANSFORMS[t]
            name = f"{group}_{t.replace('+', '-')}.{EXT[fmt]}"
            _save(fn(base, rng), folder / name, fmt, params)
            label(name, group, t, "copy")
        name = f"{ngroup}_orig.jpg"
        _save(negative, folder / name, "JPEG", {"quality": 90})
        label(name, ngroup, neg_kind, "negative")
        for t in NEGATIVE_COPIES:
            _, fn, fmt, params = TRANSFORMS[t]
            name = f"{ngroup}_{t}.{EXT[fmt]}"
            _save(fn(negative, rng), folder / name, fmt, params)
            label(name, ngroup, f"{neg_kind}+{t}", "negative_copy")
    return labels
