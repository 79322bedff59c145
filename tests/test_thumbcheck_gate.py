"""The check's shortcuts (issue 13, scale): glances made by the variant pass and the colour gate
that shuts a pair before any crop or turn is searched must give the full verifier's verdicts,
on real photographs and their copies, and a pair shut by its colours reads no thumbnail."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode, photo
from PIL import Image, ImageEnhance

from pipeline.dedup.pool import variant_batch
from pipeline.dedup.thumbcheck import ThumbnailCheck

pytestmark = pytest.mark.timeout(120)


def _bases() -> list[Image.Image]:
    data = pytest.importorskip("skimage.data")
    return [
        Image.fromarray(data.astronaut()).resize((480, 480)),
        Image.fromarray(data.coffee()),
        photo(640, 480, 5),
    ]


def _versions(base: Image.Image) -> dict[str, Image.Image]:
    w, h = base.size
    r, g, b = base.split()
    return {
        "orig": base,
        "resized": base.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "brighter": ImageEnhance.Brightness(base).enhance(1.15),
        "edge_crop": base.crop((w // 10, 0, w, h)),
        "turned": base.rotate(3, resample=Image.Resampling.BILINEAR),
        # Colours moved but within reach (chroma agreement 0.85-0.95 with the others): the gate's edge.
        "crop_saturated": ImageEnhance.Color(base.crop((w // 10, 0, w, h))).enhance(1.6),
        "turn_warm": Image.merge(
            "RGB",
            [
                c.point(lambda v, f=f: min(255, int(v * f)))
                for c, f in zip(base.rotate(3).split(), (1.15, 1.0, 0.85))
            ],
        ),
        "gray": base.convert("L").convert("RGB"),
        # Hard negative: the same structure in other colours (another product of one catalogue).
        "recoloured": Image.merge("RGB", (b, r, g)),
    }


@pytest.fixture(scope="module")
def thumbs(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[int, str], list[str]]:
    root = tmp_path_factory.mktemp("gate")
    paths, names = {}, []
    for k, base in enumerate(_bases()):
        for name, im in _versions(base).items():
            im = im.copy()
            im.thumbnail((256, 256), Image.Resampling.LANCZOS)
            row = len(names)
            (root / f"{row}.jpg").write_bytes(encode(im, "JPEG", quality=85))
            paths[row] = f"{row}.jpg"
            names.append(f"{k}:{name}")
    return root, paths, names


def _score_all(check: ThumbnailCheck, n: int) -> dict[tuple[str, str], float]:
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    shas = [f"{row:064x}" for row in range(n)]
    check.score_batch(
        [a for a, _ in pairs], [shas[a] for a, _ in pairs], [b for _, b in pairs], [shas[b] for _, b in pairs]
    )
    return check.new


def test_glances_and_gate_give_the_full_verifiers_verdicts(thumbs) -> None:
    root, paths, names = thumbs
    rows = list(paths)
    _, raw, grid = variant_batch(root, paths, rows)
    given = {r: (raw[i], grid[i]) for i, r in enumerate(rows)}
    full = _score_all(ThumbnailCheck(root, paths, {}, gate=False), len(rows))
    fast = _score_all(ThumbnailCheck(root, paths, {}, given=given), len(rows))
    assert fast == full  # the same floats, pair by pair
    shas = [f"{row:064x}" for row in rows]

    def verdict(x: str, y: str) -> float:
        a, b = sorted((shas[names.index(x)], shas[names.index(y)]))
        return fast[(a, b)]

    for k in range(3):
        assert all(
            verdict(f"{k}:orig", f"{k}:{v}") >= 0.90
            for v in ("resized", "brighter", "edge_crop", "gray", "crop_saturated", "turn_warm")
        )
        assert verdict(f"{k}:orig", f"{k}:recoloured") == 0.0
        assert all(verdict(f"{k}:orig", f"{j}:orig") < 0.90 for j in range(3) if j != k)


def test_a_pair_shut_by_its_colours_reads_no_thumbnail(thumbs, tmp_path) -> None:
    root, paths, names = thumbs
    a, b = names.index("1:orig"), names.index("1:recoloured")
    _, raw, grid = variant_batch(root, paths, [a, b])
    gone = {a: "missing/a.jpg", b: "missing/b.jpg"}  # decoding either would raise DedupError
    check = ThumbnailCheck(tmp_path, gone, {}, given={a: (raw[0], grid[0]), b: (raw[1], grid[1])})
    check.score_batch([a], ["a" * 64], [b], ["b" * 64])
    assert check.new[("a" * 64, "b" * 64)] == 0.0
    assert np.isfinite(check.signature(a).whole).all()
