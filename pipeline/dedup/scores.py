"""How two aligned views are scored beyond their correlation: overlays left out (``MASKS``) and
the penalties that keep look-alikes out (concentrated disagreement, crops of flat pictures)."""

from __future__ import annotations

import numpy as np

from pipeline.dedup.views import SIDE, edges


def _masks() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, 32x32 keep-mask) of the regions an overlay covers: a caption banner across the
    top or bottom (10-16% of the height), a logo or signature in a corner (up to ~30% of
    the width)."""
    found = []
    for rows in (3, 4, 5):
        for at, name in ((slice(0, rows), "top"), (slice(SIDE - rows, SIDE), "bottom")):
            keep = np.ones((SIDE, SIDE), bool)
            keep[at, :] = False
            found.append((f"a band of {100 * rows / SIDE:.0f}% at the {name}", keep))
    # Views are square whatever the picture's shape, so a square logo on a landscape picture
    # is taller than wide here (a quarter of a 4:3 picture's width is a third of its height).
    for high, wide in ((7, 7), (10, 10), (10, 7), (13, 10)):
        for ys, yn in ((slice(0, high), "top"), (slice(SIDE - high, SIDE), "bottom")):
            for xs, xn in ((slice(0, wide), "left"), (slice(SIDE - wide, SIDE), "right")):
                keep = np.ones((SIDE, SIDE), bool)
                keep[ys, xs] = False
                size = f"{100 * wide / SIDE:.0f}%" + ("" if high == wide else f" x {100 * high / SIDE:.0f}%")
                found.append((f"the {yn} {xn} corner ({size})", keep))
    return tuple(found)


MASKS = _masks()


MASK_PENALTY = 0.05  # a masked view's score counts this much less than an unmasked one


def concentrated(view: np.ndarray, whole: np.ndarray) -> bool:
    """Whether two aligned views disagree in a few places that are no overlay: an object
    moved or replaced (a burst shot, another product on one template), not a copy.

    ``whole`` is fitted from ``view`` (brightness and contrast may differ); each of 4x4
    blocks' residual is taken against its own variance (a flat block against a quarter
    of the picture's). A copy's residual is small everywhere, or spread thin (a tiled
    watermark, a small thumbnail's blur); an object moved leaves 3+ blocks mostly
    unexplained. Measured on bench/dedup_quality.py seed 1 (the whole-view matches of
    object-moved bursts: third-worst block >= 0.29, total >= 3.35; of copies: 90% of each
    transform's third-worst block <= 0.21).
    """
    a = view.reshape(SIDE, SIDE).astype(np.float64)
    b = whole.reshape(SIDE, SIDE).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    fit = (a * b).sum() / max(float((a * a).sum()), 1e-9)
    residual = b - fit * a
    g, cell = _BLOCKS, SIDE // _BLOCKS
    own = b.reshape(g, cell, g, cell).var(axis=(1, 3))
    share = (residual * residual).reshape(g, cell, g, cell).mean(axis=(1, 3)) / np.maximum(
        own, 0.25 * b.var() + 1e-9
    )
    worst = np.sort(share.ravel())[::-1]
    return bool(worst[2] >= _THIRD_WORST and worst.sum() >= _TOTAL)


def flat_share(raw: np.ndarray) -> float:
    """Share of a whole view's 4x4 blocks that are flat (variance < 2% of the picture's)."""
    img = raw.reshape(SIDE, SIDE).astype(np.float64)
    cell = SIDE // _BLOCKS
    own = img.reshape(_BLOCKS, cell, _BLOCKS, cell).var(axis=(1, 3))
    return float((own < 0.02 * img.var()).mean())


# A crop view of a plain picture (a product on a background) also matches a look-alike
# zoomed: on seed 1 the crop matches of other pictures scored up to 0.98, true crops of such
# pictures >= 0.956. A crop match counts this much less, times the flat share: at 0.05, of the
# verifier's cross-picture crop passes >= 0.93, 41 -> 9; of true copies' crops, 2 of 358
# (20% crops) lost (bench/dedup_verify_scores.py). At 0.08 (chosen on seed 1 of
# bench/dedup_quality.py): pair precision 0.986 -> 1.000, F1 0.917 -> 0.921, the two product
# groups that a brightness copy's 10% crop match (0.904) had joined stay apart; seed 2 P
# 0.996 either way, F1 0.920 -> 0.918.
FLAT_CROP_PENALTY = 0.08


_BLOCKS = 4  # blocks per side of the concentration test


_THIRD_WORST = 0.28  # residual share of the third-worst block, with ...


_TOTAL = 3.0  # ... the sum over the 16 blocks, above which the disagreement is concentrated


NEAR = 0.85  # the test is made only on scores that could pass


CONCENTRATED_PENALTY = 0.10  # a match with concentrated disagreement counts this much less


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` highest scores of each row (all if fewer)."""
    if scores.shape[1] <= k:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(-scores, k, axis=1)[:, :k]


MASK_CELLS = tuple(np.flatnonzero(m.reshape(8, SIDE // 8, 8, SIDE // 8).all(axis=(1, 3))) for _, m in MASKS)


_MASK_ROWS = np.stack([m.ravel() for _, m in MASKS]).astype(np.float32)


_MASK_EDGES = np.stack([(m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:]).ravel() for _, m in MASKS]).astype(np.float32)


def _masked_correlations(a: np.ndarray, b: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Correlation of ``a`` and ``b`` (flat) over the kept pixels of each row of ``masks``."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    n = masks.sum(axis=1)
    sa, sb = masks @ a, masks @ b
    cov = masks @ (a * b) - sa * sb / n
    va, vb = masks @ (a * a) - sa * sa / n, masks @ (b * b) - sb * sb / n
    ok = (va > 1e-3 * n) & (vb > 1e-3 * n)
    return np.where(ok, cov / np.sqrt(np.maximum(va * vb, 1e-12)), 0.0)


def masked_score(raw_a: np.ndarray, raw_b: np.ndarray, allowed: list[int] | None = None) -> tuple[float, int]:
    """(best score, index in MASKS) of two aligned whole views with one overlay region
    left out of both (one of ``allowed``, default any), ``MASK_PENALTY`` taken off."""
    img_a, img_b = raw_a.reshape(SIDE, SIDE), raw_b.reshape(SIDE, SIDE)
    both = (
        _masked_correlations(img_a.ravel(), img_b.ravel(), _MASK_ROWS)
        + _masked_correlations(edges(img_a).ravel(), edges(img_b).ravel(), _MASK_EDGES)
    ) / 2
    if allowed is not None:
        if not allowed:
            return 0.0, 0
        both = np.where(np.isin(np.arange(len(MASKS)), allowed), both, -1.0)
    at = int(both.argmax())
    return float(both[at]) - MASK_PENALTY, at
