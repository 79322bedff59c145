"""The thumbnail check that ``dedup`` runs on each near-duplicate candidate pair.

Two stored thumbnails match when, at 32x32 grayscale, the mean of their intensity
correlation and their edge (gradient magnitude) correlation reaches a threshold for the
best of 426 views: the whole image; 2.5, 5, 7.5, 10 or 12.5% cut off each dimension at
81 anchors (crops are the hashes' weak spot); turns of 1-5 degrees either way, with black
corners or trimmed to the inscribed rectangle; tried on either side of the pair. The view
that matched is kept (``describe``: path "aligned" for the whole picture or a crop,
"geometry" for a turn). Intensity alone scores an ellipse and a box of the same size alike;
their edges do not. When both are in colour their 8x8 chroma grids must also agree (the
grid of a cropped copy against the same crop of the other's), since grayscale structure
confuses objects of another colour on the same plain background; a grayscale copy matches
any.

``variant_hashes`` gives the candidate search pHashes of crops (5%, 10%: centre and
corners) and turns (+-2, +-4 degrees) of each thumbnail, computed at dedup time, so a copy
cropped or turned past the pHash radius still becomes a candidate.

Cost: each thumbnail is decoded at most three times per batch (whole view, its 426 views,
its variants); the views are the bulk (bench/dedup_quality.py, 2,040 pictures: dedup 123 s,
against 27 s with version 4's 76 views and no variants), and a pair costs two small
matrix-vector products,
so checking is linear in the number of pictures plus the number of pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DedupError
from pipeline.image.view import thumbnail_view

VERSION = 5  # bump when the check changes: cached verdicts of another version are ignored
SIDE = 32
_SOURCE = 128  # thumbnails are read at this size, then sampled
_ANCHORS = tuple(k / 8 for k in range(9))
BOXES = np.array(
    [(0.0, 0.0, 1.0, 1.0)]
    + [
        (ax * c, ay * c, ax * c + 1 - c, ay * c + 1 - c)
        for c in (0.025, 0.05, 0.075, 0.1, 0.125)
        for ax in _ANCHORS
        for ay in _ANCHORS
    ]
)
# Turns the check also tries (degrees, counter-clockwise), each with the corners the turn
# leaves empty filled black (a copy turned in place) and cropped to the largest rectangle of
# the same shape inside (a copy turned and trimmed): views after BOXES.
ANGLES = (-5.0, -4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0)
TURNS = tuple((a, inscribed) for inscribed in (False, True) for a in ANGLES)
# Query variants for the candidate search (``variant_hashes``): centre and corner crops of
# 5% and 10%, and turns of +-2 and +-4 degrees both ways; the search looks for each
# variant's pHash among the stored ones, so a copy cropped or turned past the pHash radius
# is still found from its original.
_VARIANT_BOXES = np.array(
    [
        (ax * c, ay * c, ax * c + 1 - c, ay * c + 1 - c)
        for c in (0.05, 0.10)
        for ax in (0, 0.5, 1)
        for ay in (0, 0.5, 1)
    ]
)
_VARIANT_TURNS = tuple((a, inscribed) for inscribed in (False, True) for a in (-4.0, -2.0, 2.0, 4.0))
MIN_HUE = 0.85  # chroma-grid correlation two colour pictures need to be one picture
_COLOURFUL = 4.0  # mean channel spread (0-255) above which a picture counts as in colour
_NO_THUMBS = (
    "restore the thumbnails (rerun `pipeline run` with --force), or pass --no-verify "
    "to group on pHash and dHash alone"
)


def turned_views(
    gray: np.ndarray, aspect: float, turns: tuple[tuple[float, bool], ...], side: int = SIDE
) -> np.ndarray:
    """``side`` x ``side`` views of ``gray`` (a square grid of a picture ``aspect`` wide per
    unit high) turned by each angle, one row per turn.

    The turn is done in the picture's own proportions, sampled bilinearly at twice ``side``
    and averaged down. Outside the picture is black; an inscribed turn zooms in on the
    largest same-shaped rectangle inside the turned picture, so nothing is outside.
    """
    h, w = gray.shape
    n = side * 2
    t = (np.arange(n) + 0.5) / n - 0.5
    views = np.empty((len(turns), side * side))
    for k, (angle, inscribed) in enumerate(turns):
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        scale = min(aspect / (aspect * c + abs(s)), 1.0 / (aspect * abs(s) + c)) if inscribed else 1.0
        x, y = t[None, :] * aspect * scale, t[:, None] * scale
        u = (c * x - s * y) / aspect * w + (w - 1) / 2
        v = (s * x + c * y) * h + (h - 1) / 2
        inside = (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
        u, v = np.clip(u, 0, w - 1.001), np.clip(v, 0, h - 1.001)
        ui, vi = u.astype(np.int64), v.astype(np.int64)
        fu, fv = u - ui, v - vi
        at = (
            (1 - fv) * (1 - fu) * gray[vi, ui]
            + (1 - fv) * fu * gray[vi, ui + 1]
            + fv * (1 - fu) * gray[vi + 1, ui]
            + fv * fu * gray[vi + 1, ui + 1]
        )
        views[k] = np.where(inside, at, 0.0).reshape(side, 2, side, 2).mean(axis=(1, 3)).ravel()
    return views


def _dct_rows(n: int, keep: int) -> np.ndarray:
    k, i = np.arange(keep)[:, None], np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_rows(SIDE, 8)


def phashes(views: np.ndarray) -> np.ndarray:
    """pHash (as ``process.phash``: 8x8 low DCT coefficients above their median) of each
    32x32 view, as uint64."""
    img = views.reshape(-1, SIDE, SIDE)
    low = np.round(np.einsum("ij,kjl,ml->kim", _DCT, img, _DCT, optimize=False), 6).reshape(len(views), 64)
    ranked = np.sort(low, axis=1)
    bits = low > ((ranked[:, 31] + ranked[:, 32]) / 2)[:, None]
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def describe(view: int) -> tuple[str, str]:
    """(path, what was found) for the index of the view that matched best."""
    if view <= 0:
        return "aligned", "whole picture"
    if view < len(BOXES):
        x0, y0, x1, y1 = BOXES[view]
        return (
            "aligned",
            f"cropped {100 * (1 - (x1 - x0)):.1f}% at ({x0 / max(1e-9, 1 - (x1 - x0)):.2f}, {y0 / max(1e-9, 1 - (y1 - y0)):.2f})",
        )
    angle, inscribed = TURNS[view - len(BOXES)]
    return "geometry", f"rotated {angle:+g}°" + (
        ", trimmed to the inscribed rectangle" if inscribed else ", black corners"
    )


@dataclass(frozen=True, slots=True)
class _Signature:
    whole: np.ndarray  # the normalised whole view (intensity half, edge half)
    mean: float  # grey level, for flat pictures whose views are all zero
    tint: np.ndarray | None  # 8x8 RGB grid (64, 3) if the picture is in colour


def box_views(gray: np.ndarray, boxes: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Area-averaged ``side`` x ``side`` views of ``gray``, one row per fractional box.

    Sums come from the integral image, interpolated bilinearly at fractional edges, which
    is exact when pixels are constant squares: one numpy expression for every box.
    """
    h, w = gray.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = gray.cumsum(axis=0).cumsum(axis=1)
    steps = np.linspace(0.0, 1.0, side + 1)
    xs = (boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps) * w
    ys = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps) * h
    xi, yi = np.clip(xs.astype(np.int64), 0, w - 1), np.clip(ys.astype(np.int64), 0, h - 1)
    fx, fy = (xs - xi)[:, None, :], (ys - yi)[:, :, None]
    x, y = xi[:, None, :], yi[:, :, None]
    at = (
        (1 - fy) * (1 - fx) * integral[y, x]
        + (1 - fy) * fx * integral[y, x + 1]
        + fy * (1 - fx) * integral[y + 1, x]
        + fy * fx * integral[y + 1, x + 1]
    )
    sums = at[:, 1:, 1:] - at[:, :-1, 1:] - at[:, 1:, :-1] + at[:, :-1, :-1]
    area = (boxes[:, 2] - boxes[:, 0]) * w * (boxes[:, 3] - boxes[:, 1]) * h / (side * side)
    return sums.reshape(len(boxes), side * side) / area[:, None]


def normalize(views: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Each view as one unit-length row: half zero-mean pixels, half gradient magnitudes.

    A dot product of two rows is then the mean of the intensity and edge correlations.
    """
    img = views.reshape(-1, side, side)
    gx, gy = np.diff(img, axis=2)[:, :-1, :], np.diff(img, axis=1)[:, :, :-1]
    edges = np.sqrt(gx * gx + gy * gy).reshape(len(views), -1)
    return (np.hstack([_unit(views), _unit(edges)]) / np.sqrt(2.0)).astype(np.float32)


def _unit(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=1, keepdims=True))
    return np.where(norm > 1e-3 * rows.shape[1], centred / np.maximum(norm, 1e-9), 0.0)


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` without BLAS: OpenBLAS threads spin against each other on a busy machine
    and made these small products 100x slower (measured on the 2-core CI box)."""
    return np.einsum("ij,kj->ik", a, b, optimize=False)


def is_colourful(grid: np.ndarray) -> bool:
    return float(np.abs(grid - grid.mean(axis=1, keepdims=True)).mean()) >= _COLOURFUL


def colour_agreement(ca: np.ndarray, cb: np.ndarray) -> float:
    """Correlation of the chroma vectors (RGB minus its grey) of two 8x8 RGB grids.

    Brightness, contrast and saturation changes scale those vectors but keep their
    direction; another object colour turns them.
    """
    xa, xb = ca - ca.mean(axis=1, keepdims=True), cb - cb.mean(axis=1, keepdims=True)
    return float((xa * xb).sum() / np.sqrt((xa * xa).sum() * (xb * xb).sum()))


def _cropped_tint(tint: np.ndarray, view: int) -> np.ndarray:
    """The 8x8 RGB grid of the box of ``view`` (a crop of BOXES), resampled from ``tint``."""
    if not 0 < view < len(BOXES):
        return tint
    grid = tint.reshape(8, 8, 3)
    return np.stack([box_views(grid[:, :, c], BOXES[view : view + 1], side=8)[0] for c in range(3)], axis=1)


def _hue_agrees(a: _Signature, b: _Signature, view: int) -> bool:
    if a.tint is None or b.tint is None or colour_agreement(a.tint, b.tint) >= MIN_HUE:
        return True
    # A cropped copy's grid covers part of its original's: compare it with that part.
    return (
        max(
            colour_agreement(_cropped_tint(a.tint, view), b.tint),
            colour_agreement(a.tint, _cropped_tint(b.tint, view)),
        )
        >= MIN_HUE
    )


def hue_agrees(ca: np.ndarray, cb: np.ndarray) -> bool:
    """Whether two 8x8 RGB grids are one colouring, as they are or with either one cropped
    by one of BOXES (a cropped copy's grid covers only part of its original's)."""
    if colour_agreement(ca, cb) >= MIN_HUE:
        return True
    for x, y in ((ca, cb), (cb, ca)):
        grid = x.reshape(8, 8, 3)
        crops = np.stack([box_views(grid[:, :, c], BOXES[1:], side=8) for c in range(3)], axis=2)
        xs, ys = crops - crops.mean(axis=2, keepdims=True), y - y.mean(axis=1, keepdims=True)
        num = (xs * ys[None]).sum(axis=(1, 2))
        den = np.sqrt((xs * xs).sum(axis=(1, 2)) * (ys * ys).sum())
        if (num / np.maximum(den, 1e-12)).max() >= MIN_HUE:
            return True
    return False


def _combine(a: _Signature, b: _Signature, structure: float, view: int = 0) -> float:
    if not _hue_agrees(a, b, view):
        return 0.0
    if not a.whole.any() and not b.whole.any():  # both flat: same picture iff same grey level
        return 1.0 if abs(a.mean - b.mean) < 8 else 0.0
    return structure


class ThumbnailCheck:
    """Scores of content pairs (0..1), keyed by their SHA-256 pair; earlier verdicts reused.

    ``views[key]`` is the index of the view that matched best (``describe`` names it).
    """

    def __init__(self, out: Path, thumbs: dict[int, str | None], known: dict[tuple[str, str], float]) -> None:
        self.out = out
        self.thumbs = thumbs  # content row -> thumbnail path relative to OUT
        self.known = known
        self.new: dict[tuple[str, str], float] = {}
        self.views: dict[tuple[str, str], int] = {}
        self.reused = 0
        self.signatures: dict[int, _Signature] = {}

    def score(self, row_a: int, sha_a: str, row_b: int, sha_b: str) -> float:
        key = _key(sha_a, sha_b)
        if key in self.known:
            self.reused += 1
            return self.known[key]
        if key not in self.new:  # a pair outside the batch (two group seeds)
            ca, cb = self._crops(row_a), self._crops(row_b)
            sa, sb = _products(cb, ca[:1])[:, 0], _products(ca, cb[:1])[:, 0]
            best = sa if sa.max() >= sb.max() else sb
            self.views[key] = int(best.argmax())
            self.new[key] = _combine(
                self.signature(row_a), self.signature(row_b), float(best.max()), self.views[key]
            )
        return self.new[key]

    def score_batch(self, rows_a: list[int], shas_a: list[str], rows_b: list[int], shas_b: list[str]) -> None:
        """Score every pair not known yet, reading each thumbnail at most twice."""
        todo = [k for k in range(len(rows_a)) if _key(shas_a[k], shas_b[k]) not in self.known]
        partners: dict[int, list[tuple[int, int]]] = {}
        for k in todo:
            partners.setdefault(rows_a[k], []).append((k, rows_b[k]))
            partners.setdefault(rows_b[k], []).append((k, rows_a[k]))
        for row in partners:
            self.signature(row)
        best = dict.fromkeys(todo, -1.0)
        view = dict.fromkeys(todo, 0)
        for row, pairs in partners.items():
            crops = self._crops(row)
            others = np.stack([self.signatures[other].whole for _, other in pairs])
            scores = _products(others, crops)
            for (k, _), value, at in zip(pairs, scores.max(axis=1).tolist(), scores.argmax(axis=1).tolist()):
                if value > best[k]:
                    best[k], view[k] = value, at
        for k in todo:
            a, b = self.signatures[rows_a[k]], self.signatures[rows_b[k]]
            key = _key(shas_a[k], shas_b[k])
            self.new[key] = _combine(a, b, best[k], view[k])
            self.views[key] = view[k]

    def signature(self, row: int) -> _Signature:
        if row not in self.signatures:
            gray, rgb, _ = self._pixels(row)
            whole = box_views(gray, BOXES[:1])
            self.signatures[row] = _Signature(
                whole=normalize(whole)[0], mean=float(whole.mean()), tint=rgb if is_colourful(rgb) else None
            )
        return self.signatures[row]

    def tint(self, row: int) -> np.ndarray | None:
        return self.signature(row).tint

    def variant_hashes(self, row: int) -> np.ndarray:
        """pHashes of the cropped and turned variants of a content (``_VARIANT_*``)."""
        gray, _, aspect = self._pixels(row)
        return phashes(
            np.vstack([box_views(gray, _VARIANT_BOXES), turned_views(gray, aspect, _VARIANT_TURNS)])
        )

    def _crops(self, row: int) -> np.ndarray:
        gray, _, aspect = self._pixels(row)
        return normalize(np.vstack([box_views(gray, BOXES), turned_views(gray, aspect, TURNS)]))

    def _pixels(self, row: int) -> tuple[np.ndarray, np.ndarray, float]:
        rel = self.thumbs.get(row)
        if not rel:
            raise DedupError(f"row {row} has no thumbnail to check near duplicates on; {_NO_THUMBS}")
        try:
            return thumbnail_view(str(self.out / rel), _SOURCE)
        except OSError as exc:
            raise DedupError(
                f"thumbnail {rel} of row {row} is missing or unreadable ({exc}); {_NO_THUMBS}"
            ) from exc


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)
