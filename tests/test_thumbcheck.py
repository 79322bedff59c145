"""The thumbnail check alone (``pipeline.dedup.thumbcheck``), on real JPEG thumbnails written to disk:
the whole view settles a plain copy, a caption banner or a one-edge crop is found by its own
view, and a copy with an object moved is refused."""

from __future__ import annotations

import pytest
from conftest import encode, photo
from PIL import Image, ImageDraw

from pipeline.dedup.thumbcheck import STOP, ThumbnailCheck, describe
from pipeline.dedup.views import BOXES, TURNS

pytestmark = pytest.mark.timeout(60)


def _banner(im: Image.Image) -> Image.Image:
    out = im.copy()
    h = im.height * 12 // 100
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, im.height - h, im.width, im.height), fill=(20, 20, 20))
    draw.text((12, im.height - h + h // 4), "shared via example.app", fill=(255, 255, 255))
    return out


def _object_moved(im: Image.Image) -> Image.Image:
    """Two patches of 18% of the side swapped: the same scene with things moved. Its whole
    view still correlates 0.91 with the original's; the concentration test refuses it."""
    out = im.copy()
    w, h = im.width * 18 // 100, im.height * 18 // 100
    a, b = (40, 60), (400, 280)
    pa, pb = im.crop((*a, a[0] + w, a[1] + h)), im.crop((*b, b[0] + w, b[1] + h))
    out.paste(pb, a)
    out.paste(pa, b)
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[float, int]]:
    """(score, view) of the original against each of its versions, 256 px q85 thumbnails."""
    root = tmp_path_factory.mktemp("thumbcheck")
    base = photo(640, 480, 31)
    versions = {
        "orig": base,
        "resized": base.resize((320, 240), Image.Resampling.LANCZOS),
        "banner": _banner(base),
        "edge_crop": base.crop((64, 0, 640, 480)),  # 10% off the left edge only
        "moved": _object_moved(base),
    }
    thumbs = {}
    for row, (name, im) in enumerate(versions.items()):
        im = im.copy()
        im.thumbnail((256, 256), Image.Resampling.LANCZOS)
        (root / f"{name}.jpg").write_bytes(encode(im, "JPEG", quality=85))
        thumbs[row] = f"{name}.jpg"
    check = ThumbnailCheck(root, thumbs, {})
    others = list(range(1, len(versions)))
    shas = [f"{row:064x}" for row in range(len(versions))]
    check.score_batch([0] * len(others), [shas[0]] * len(others), others, [shas[r] for r in others])
    return {
        name: (check.new[(shas[0], shas[row])], check.views[(shas[0], shas[row])])
        for row, name in enumerate(versions)
        if row
    }


def test_a_resized_copy_is_settled_by_the_whole_view(scored: dict[str, tuple[float, int]]) -> None:
    score, view = scored["resized"]
    assert score >= STOP
    assert view == 0


def test_a_caption_banner_is_left_out(scored: dict[str, tuple[float, int]]) -> None:
    score, view = scored["banner"]
    assert score >= 0.90
    assert view >= len(BOXES) + len(TURNS)
    assert "band" in describe(view)[1] and "bottom" in describe(view)[1]


def test_a_crop_off_one_edge_is_found(scored: dict[str, tuple[float, int]]) -> None:
    score, view = scored["edge_crop"]
    assert score >= 0.93  # the stricter match a pair past the hash rule needs
    assert describe(view) == ("aligned", "cropped 10.0% off the left")


def test_an_object_moved_is_another_picture(scored: dict[str, tuple[float, int]]) -> None:
    score, _ = scored["moved"]
    assert score < 0.90
