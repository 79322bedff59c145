"""The thumbnail check that ``dedup`` runs on each near-duplicate candidate pair.

Two stored thumbnails match when, at 32x32 grayscale, the mean of their intensity
correlation and their edge (gradient magnitude) correlation reaches a threshold for the
best of their views: the whole image; 2.5, 5, 7.5, 10 or 12.5% cut off each dimension at
81 anchors, or 2.5-10% off one edge (crops are the hashes' weak spot); turns of 1-5 degrees
either way, with black corners or trimmed to the inscribed rectangle; tried on either side
of the pair; and, for copies with an overlay, the whole picture with a band at the top or
bottom or a corner left out of both (``MASKS``, at ``MASK_PENALTY`` less, as leaving part
out makes any two pictures agree more). The view that matched is kept (``describe``: path
"aligned" for the whole picture, a crop or a masked view, "geometry" for a turn).
Intensity alone scores an ellipse and a box of the same size alike; their edges do not.
When both are in colour their 8x8 chroma grids must also agree (the grid of a cropped copy
against the same crop of the other's), since grayscale structure confuses objects of
another colour on the same plain background; a grayscale copy matches any. Two
penalties keep look-alikes out: a match whose disagreement sits in a few blocks (an
object moved: ``concentrated``) and a crop of a mostly flat picture (a look-alike zoomed:
``FLAT_CROP_PENALTY``) count less.

The search is lazy (version 6; bench/thumbcheck_cost.py): the whole view first, final when
it scores ``STOP`` (resizes, recompressions, colour changes: most true pairs); else every
crop and turn at 16x16, and only the ``_REFINE`` best of them on each side at 32x32, then
the masks. A thumbnail costs its decode and whole view; the views only when a pair of it
is not settled by the whole picture.

Two shortcuts keep the same verdicts, float for float (issue 13, scale; tested): a pair
below ``STOP`` whose 8x8 colour grids no view could reconcile (whole, any crop of BOXES on
either side, any of MASKS left out: ``_hue_possible``) scores 0 at once, as ``_combine``
would give it after the search (most false candidates of a big catalog: the search cost
~12 ms of CPU a pair, the gate ~2-4 ms); and a thumbnail's signature is made from its
``Glance`` (the whole view and the colour grid, 2.2 KB), which the variant pass already
made from the same read, so a pair settled by its whole views or its colours decodes
nothing (``given``).

``variant_hashes`` gives the candidate search pHashes of crops (5%, 10%: centre and
corners; 10% off one edge) and turns (+-2, +-4 degrees) of each thumbnail, computed at dedup time, so a copy
cropped or turned past the pHash radius still becomes a candidate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DedupError
from pipeline.image.view import thumbnail_view

VERSION = 8  # bump when the check changes: cached verdicts of another version are ignored
SIDE = 32
_COARSE = 16  # side of the views every crop and turn is first scored at
_REFINE = 3  # best coarse crops, and turns, of each side of a pair scored again at SIDE
STOP = 0.95  # a whole-view score this high is final: no rule asks for more (dedup: 0.90, 0.93)
_SOURCE = 128  # thumbnails are read at this size, then sampled
_ANCHORS = tuple(k / 8 for k in range(9))
# Up to 10%: deeper one-edge views matched burst shots (the frame moved by 12%) on seed 1.
_EDGE_CUTS = (0.025, 0.05, 0.075, 0.1)
BOXES = np.array(
    [(0.0, 0.0, 1.0, 1.0)]
    + [
        (ax * c, ay * c, ax * c + 1 - c, ay * c + 1 - c)
        for c in (0.025, 0.05, 0.075, 0.1, 0.125)
        for ax in _ANCHORS
        for ay in _ANCHORS
    ]
    # One edge cut off (left, right, top, bottom): the copy's shape changes with it.
    + [box for c in _EDGE_CUTS for box in ((c, 0, 1, 1), (0, 0, 1 - c, 1), (0, c, 1, 1), (0, 0, 1, 1 - c))]
)
# Turns the check also tries (degrees, counter-clockwise), each with the corners the turn
# leaves empty filled black (a copy turned in place) and cropped to the largest rectangle of
# the same shape inside (a copy turned and trimmed): views after BOXES.
ANGLES = (-5.0, -4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0)
TURNS = tuple((a, inscribed) for inscribed in (False, True) for a in ANGLES)
# Query variants for the candidate search (``variant_hashes``): centre and corner crops of
# 5% and 10%, 10% off each edge, and turns of +-2 and +-4 degrees both ways; the search looks for each
# variant's pHash among the stored ones, so a copy cropped or turned past the pHash radius
# is still found from its original.
_VARIANT_BOXES = np.array(
    [
        (ax * c, ay * c, ax * c + 1 - c, ay * c + 1 - c)
        for c in (0.05, 0.10)
        for ax in (0, 0.5, 1)
        for ay in (0, 0.5, 1)
    ]
    # 10% off one edge: such a copy is past the radius of every centre or corner crop
    # (seed 1: 18% of them, 0% with these).
    + [(0.1, 0, 1, 1), (0, 0, 0.9, 1), (0, 0.1, 1, 1), (0, 0, 1, 0.9)]
    # 15% off the top, off the bottom: where banners go; 25% off the left, off the right:
    # where corner logos go (up to a quarter of the width). Searched against the same variant
    # of the others too (``BAND_COLUMNS``), as an opaque strip or logo moves the whole
    # picture's pHash past any radius and only the two pictures without it agree.
    + [(0, 0.15, 1, 1), (0, 0, 1, 0.85), (0.25, 0, 1, 1), (0, 0, 0.75, 1)]
)
BAND_COLUMNS = tuple(range(len(_VARIANT_BOXES) - 4, len(_VARIANT_BOXES)))  # in variant_hashes' rows
_VARIANT_TURNS = tuple((a, inscribed) for inscribed in (False, True) for a in (-4.0, -2.0, 2.0, 4.0))


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
    return turned_view_stack(gray[None], np.array([aspect]), turns, side)[0]


def turned_view_stack(
    gray: np.ndarray, aspect: np.ndarray, turns: tuple[tuple[float, bool], ...], side: int = SIDE
) -> np.ndarray:
    """(images, turns, side * side) views of each of ``gray`` (images, h, w) turned (see ``turned_views``).

    Where each sample falls depends only on the picture's aspect ratio, and thumbnails share
    a few (their sides are whole pixels): the sample positions and weights of an aspect are
    worked out once (``_turn_samples``), and each picture of it only gathers and weighs.
    """
    count, h, w = gray.shape
    views = np.empty((count, len(turns), side * side))
    flat = gray.reshape(count, -1)
    for value in np.unique(aspect):
        these = np.flatnonzero(aspect == value)
        pixels = flat[these]
        for k, (at, weights, inside) in enumerate(_turn_samples(float(value), turns, h, w, side)):
            g = pixels[:, at]
            sampled = (
                weights[0] * g[:, 0] + weights[1] * g[:, 1] + weights[2] * g[:, 2] + weights[3] * g[:, 3]
            )
            views[these, k] = (
                np.where(inside, sampled, 0.0).reshape(len(these), side, 2, side, 2).mean(axis=(2, 4))
            ).reshape(len(these), -1)
    return views


@functools.lru_cache(maxsize=16)  # ~1.5 MB each
def _turn_samples(
    aspect: float, turns: tuple[tuple[float, bool], ...], h: int, w: int, side: int
) -> list[tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]]:
    """Per turn: the 4 pixels each of the (2 side)^2 samples reads (4, n, n), their bilinear
    weights, and which samples fall inside the picture."""
    n = side * 2
    t = (np.arange(n) + 0.5) / n - 0.5
    found = []
    for angle, inscribed in turns:
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        scale = min(aspect / (aspect * c + abs(s)), 1.0 / (aspect * abs(s) + c)) if inscribed else 1.0
        x, y = t[None, :] * aspect * scale, t[:, None] * scale
        u = (c * x - s * y) / aspect * w + (w - 1) / 2
        v = (s * x + c * y) * h + (h - 1) / 2
        inside = (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
        u, v = np.clip(u, 0, w - 1.001), np.clip(v, 0, h - 1.001)
        ui, vi = u.astype(np.int64), v.astype(np.int64)
        fu, fv = u - ui, v - vi
        at = vi * w + ui
        pixels = np.stack([at, at + 1, at + w, at + w + 1], axis=0)
        weights = ((1 - fv) * (1 - fu), (1 - fv) * fu, fv * (1 - fu), fv * fu)
        found.append((pixels, weights, inside))
    return found


def _dct_rows(n: int, keep: int) -> np.ndarray:
    k, i = np.arange(keep)[:, None], np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_rows(SIDE, 8)


def phashes(views: np.ndarray) -> np.ndarray:
    """pHash (as ``image/hashes.phash``: 8x8 low DCT coefficients above their median) of each
    32x32 view, as uint64."""
    img = views.reshape(-1, SIDE, SIDE)
    # Rows then columns: one 4-index einsum (no BLAS, see _products) cost 4x as much.
    rows = np.einsum("ij,kjl->kil", _DCT, img, optimize=False)
    low = np.round(np.einsum("kil,ml->kim", rows, _DCT, optimize=False), 6).reshape(len(views), 64)
    ranked = np.sort(low, axis=1)
    bits = low > ((ranked[:, 31] + ranked[:, 32]) / 2)[:, None]
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def describe(view: int) -> tuple[str, str]:
    """(path, what was found) for the index of the view that matched best."""
    if view <= 0:
        return "aligned", "whole picture"
    if view < len(BOXES):
        x0, y0, x1, y1 = BOXES[view]
        cx, cy = 1 - (x1 - x0), 1 - (y1 - y0)
        if min(cx, cy) < 1e-9:  # one edge
            edge = ("left" if x0 else "right") if cx > 1e-9 else ("top" if y0 else "bottom")
            return "aligned", f"cropped {100 * max(cx, cy):.1f}% off the {edge}"
        return "aligned", f"cropped {100 * cx:.1f}% at ({x0 / cx:.2f}, {y0 / cy:.2f})"
    if view >= len(BOXES) + len(TURNS):
        return "aligned", f"whole picture without {MASKS[view - len(BOXES) - len(TURNS)][0]}"
    angle, inscribed = TURNS[view - len(BOXES)]
    return "geometry", f"rotated {angle:+g}°" + (
        ", trimmed to the inscribed rectangle" if inscribed else ", black corners"
    )


# A thumbnail's glance, what its signature is made from and all a pair settled by its whole
# views or its colours needs: the 32x32 whole view times 16 (exact integers: each pixel is the
# mean of 4x4 of the 128 px read) as uint16, and the 8x8 RGB grid as uint8. 2.2 KB a
# thumbnail, so the variant pass can hand every content's to the checks (no second decode).
Glance = tuple[np.ndarray, np.ndarray]


def glance(gray: np.ndarray, grid: np.ndarray) -> Glance:
    """The glance of a thumbnail read as ``thumbnail_view`` reads it (``_SOURCE`` px)."""
    return glance_stack(gray[None], grid[None])[0][0], grid.astype(np.uint8)


def glance_stack(gray: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The glances of a stack of reads: (images, 1024) uint16 whole views, (images, 64, 3) uint8 grids."""
    count, h, w = gray.shape
    if h == w == 4 * SIDE:  # the whole view's pixels are sums of 4x4 blocks, as box_views makes them
        sums = gray.reshape(count, SIDE, 4, SIDE, 4).sum(axis=(2, 4)).reshape(count, -1)
    else:
        sums = box_view_stack(gray, BOXES[:1])[:, 0] * 16
    return np.rint(sums).astype(np.uint16), grid.astype(np.uint8)


def _signature(raw16: np.ndarray, grid: np.ndarray) -> _Signature:
    raw = raw16.astype(np.float64) / 16
    half = SIDE // _COARSE
    coarse = raw.reshape(_COARSE, half, _COARSE, half).mean(axis=(1, 3)).reshape(1, -1)
    rgb = grid.astype(np.float64)
    return _Signature(
        whole=normalize(raw[None])[0],
        coarse=normalize(coarse, _COARSE)[0],
        raw=raw.astype(np.float32),
        mean=float(raw.mean()),
        tint=rgb if is_colourful(rgb) else None,
    )


_HUE_SLACK = 1e-6  # the colour gate passes a pair this close to MIN_HUE: the full check decides


@functools.cache
def _crop_cells() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 colour grid of each crop of BOXES[1:] as a weighted sum of 4 cells of the
    whole grid: (4, crops * 64) cell indices and (4, crops * 64, 1) weights. A crop of at
    most 12.5% makes each cell from at most 2 x 2 cells, so 4 gathers of (R, G, B) rows
    give every crop's grid (``box_view_stack`` per channel read 3 x 81 integral corners a
    crop: ~1.6x the time), the same grids to ~1e-11."""
    eye = np.eye(8)
    n = len(BOXES) - 1
    rows = box_view_stack(np.repeat(eye[:, :, None], 8, axis=2), BOXES[1:], 8).reshape(8, n, 8, 8)
    cols = box_view_stack(np.repeat(eye[:, None, :], 8, axis=1), BOXES[1:], 8).reshape(8, n, 8, 8)
    ay, ax = rows[:, :, :, 0].transpose(1, 2, 0), cols[:, :, 0, :].transpose(1, 2, 0)  # (crop, out, in)
    iy, ix = (
        np.sort(np.argsort(-ay, axis=2)[:, :, :2], axis=2),
        np.sort(np.argsort(-ax, axis=2)[:, :, :2], axis=2),
    )
    wy, wx = np.take_along_axis(ay, iy, 2), np.take_along_axis(ax, ix, 2)
    cells = (iy[:, :, None, :, None] * 8 + ix[:, None, :, None, :]).reshape(n * 64, 4)
    weights = (wy[:, :, None, :, None] * wx[:, None, :, None, :]).reshape(n * 64, 4)
    return np.ascontiguousarray(cells.T), np.ascontiguousarray(weights.T[:, :, None])


def _unit_chroma(grids: np.ndarray) -> np.ndarray:
    """8x8 RGB grids' chroma (RGB minus its grey), each as one unit vector (a row; a single
    grid gives one flat vector): dot products of two are ``colour_agreement``."""
    x = grids - grids.mean(axis=-1, keepdims=True)
    x = x.reshape(*grids.shape[:-2], -1)
    return x / np.maximum(np.sqrt((x * x).sum(axis=-1, keepdims=True)), 1e-12)


@dataclass(frozen=True, slots=True)
class _Signature:
    whole: np.ndarray  # the normalised whole view (intensity half, edge half)
    coarse: np.ndarray  # the same at _COARSE x _COARSE
    raw: np.ndarray  # the whole view's pixels (SIDE x SIDE), for the masked views
    mean: float  # grey level, for flat pictures whose views are all zero
    tint: np.ndarray | None  # 8x8 RGB grid (64, 3) if the picture is in colour


def box_views(gray: np.ndarray, boxes: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Area-averaged ``side`` x ``side`` views of ``gray``, one row per fractional box.

    Sums come from the integral image, interpolated bilinearly at fractional edges, which
    is exact when pixels are constant squares: one numpy expression for every box.
    """
    return box_view_stack(gray[None], boxes, side)[0]


def box_view_stack(gray: np.ndarray, boxes: np.ndarray, side: int = SIDE) -> np.ndarray:
    """(images, boxes, side * side) area-averaged views of each of ``gray`` (images, h, w)."""
    count, h, w = gray.shape
    integral = np.zeros((count, h + 1, w + 1))
    np.cumsum(gray, axis=1, out=integral[:, 1:, 1:])
    np.cumsum(integral[:, 1:, 1:], axis=2, out=integral[:, 1:, 1:])
    corners, weights, area = _box_samples(boxes.tobytes(), len(boxes), h, w, side)
    flat = integral.reshape(count, -1)
    at = (
        weights[0] * flat[:, corners[0]]
        + weights[1] * flat[:, corners[1]]
        + weights[2] * flat[:, corners[2]]
        + weights[3] * flat[:, corners[3]]
    ).reshape(count, len(boxes), side + 1, side + 1)
    sums = at[:, :, 1:, 1:] - at[:, :, :-1, 1:] - at[:, :, 1:, :-1] + at[:, :, :-1, :-1]
    return sums.reshape(count, len(boxes), side * side) / area[None, :, None]


@functools.lru_cache(maxsize=8)  # BOXES at 16 (8 MB), the variants at 32; fine and nudged crops come and go
def _box_samples(
    boxes_bytes: bytes, n: int, h: int, w: int, side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the integral image is read for each box's grid corners (4 flat positions each,
    bilinear at fractional edges), their weights, and each box's pixel area per view pixel."""
    boxes = np.frombuffer(boxes_bytes).reshape(n, 4)
    steps = np.linspace(0.0, 1.0, side + 1)
    xs = (boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps) * w
    ys = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps) * h
    xi, yi = np.clip(xs.astype(np.int64), 0, w - 1), np.clip(ys.astype(np.int64), 0, h - 1)
    fx, fy = (xs - xi)[:, None, :], (ys - yi)[:, :, None]
    x, y = xi[:, None, :], yi[:, :, None]
    at = y * (w + 1) + x
    corners = np.stack([at, at + 1, at + w + 1, at + w + 2]).reshape(4, -1)
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]).reshape(4, -1)
    area = (boxes[:, 2] - boxes[:, 0]) * w * (boxes[:, 3] - boxes[:, 1]) * h / (side * side)
    return corners, weights, area


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
    if view >= len(BOXES) + len(TURNS):  # an overlay left out: its colours too
        return _hue_without(a.tint, b.tint, view - len(BOXES) - len(TURNS))
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


def _hue_without(ca: np.ndarray, cb: np.ndarray, mask: int) -> bool:
    """Whether two 8x8 RGB grids agree on the cells MASKS[mask] keeps whole."""
    keep = _MASK_CELLS[mask]
    return colour_agreement(ca[keep], cb[keep]) >= MIN_HUE


def _combine(a: _Signature, b: _Signature, structure: float, view: int = 0) -> float:
    if not _hue_agrees(a, b, view):
        return 0.0
    if not a.whole.any() and not b.whole.any():  # both flat: same picture iff same grey level
        return 1.0 if abs(a.mean - b.mean) < 8 else 0.0
    return structure


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
# pictures >= 0.956. A crop match counts this much less, times the flat share: of the
# verifier's cross-picture crop passes >= 0.93, 41 -> 9; of true copies' crops, 2 of 358
# (20% crops) lost (bench/dedup_verify_scores.py).
FLAT_CROP_PENALTY = 0.05
_BLOCKS = 4  # blocks per side of the concentration test
_THIRD_WORST = 0.28  # residual share of the third-worst block, with ...
_TOTAL = 3.0  # ... the sum over the 16 blocks, above which the disagreement is concentrated
_NEAR = 0.85  # the test is made only on scores that could pass
CONCENTRATED_PENALTY = 0.10  # a match with concentrated disagreement counts this much less


_POLISH = 0.80  # crop matches from here up to STOP are nudged (_polish)
_NUDGE = 0.00625  # of the side: half the step of the crop grid at 5%, a fifth of a pixel at 32


def _nudged(box: np.ndarray) -> np.ndarray:
    """``box`` moved by -1, 0, +1 nudges in x and y, and grown or shrunk by one, inside [0, 1]."""
    x0, y0, x1, y1 = box
    found = []
    for grow in (-_NUDGE, 0.0, _NUDGE):
        w, h = min(1.0, x1 - x0 + grow), min(1.0, y1 - y0 + grow)
        for dx in (-_NUDGE, 0.0, _NUDGE):
            for dy in (-_NUDGE, 0.0, _NUDGE):
                nx = min(max(0.0, x0 + dx - grow / 2), 1.0 - w)
                ny = min(max(0.0, y0 + dy - grow / 2), 1.0 - h)
                found.append((nx, ny, nx + w, ny + h))
    return np.array(found)


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` highest scores of each row (all if fewer)."""
    if scores.shape[1] <= k:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(-scores, k, axis=1)[:, :k]


def _edges(img: np.ndarray) -> np.ndarray:
    gx, gy = np.diff(img, axis=-1)[..., :-1, :], np.diff(img, axis=-2)[..., :, :-1]
    return np.sqrt(gx * gx + gy * gy)


_MASK_CELLS = tuple(np.flatnonzero(m.reshape(8, SIDE // 8, 8, SIDE // 8).all(axis=(1, 3))) for _, m in MASKS)
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
        + _masked_correlations(_edges(img_a).ravel(), _edges(img_b).ravel(), _MASK_EDGES)
    ) / 2
    if allowed is not None:
        if not allowed:
            return 0.0, 0
        both = np.where(np.isin(np.arange(len(MASKS)), allowed), both, -1.0)
    at = int(both.argmax())
    return float(both[at]) - MASK_PENALTY, at


class ThumbnailCheck:
    """Scores of content pairs (0..1), keyed by their SHA-256 pair; earlier verdicts reused.

    ``views[key]`` is the index of the view that matched best (``describe`` names it).
    """

    def __init__(
        self,
        out: Path,
        thumbs: dict[int, str | None],
        known: dict[tuple[str, str], float],
        *,
        given: dict[int, Glance] | None = None,
        gate: bool = True,
    ) -> None:
        self.out = out
        self.gate = gate  # shut pairs whose colours no view reconciles (exact; off only to test it)
        self.thumbs = thumbs  # content row -> thumbnail path relative to OUT
        self.known = known
        self.new: dict[tuple[str, str], float] = {}
        self.views: dict[tuple[str, str], int] = {}
        self.reused = 0
        self.signatures: dict[int, _Signature] = {}
        # Glances already made (by the variant pass): a pair settled by its whole views or
        # its colours then decodes nothing.
        self.given = given or {}
        self._crop_tints: dict[int, np.ndarray] = {}
        # Pixels read for signatures during one score_batch, for its searches (not decoded twice).
        self._held: dict[int, tuple[np.ndarray, np.ndarray, float]] | None = None

    def score(self, row_a: int, sha_a: str, row_b: int, sha_b: str) -> float:
        key = _key(sha_a, sha_b)
        if key in self.known:
            self.reused += 1
            return self.known[key]
        if key not in self.new:  # a pair outside the batch (two group seeds)
            self.score_batch([row_a], [sha_a], [row_b], [sha_b])
        return self.new[key]

    def score_batch(self, rows_a: list[int], shas_a: list[str], rows_b: list[int], shas_b: list[str]) -> None:
        """Score every pair not known yet: whole views first, the rest only where needed.

        Each thumbnail is decoded once: its signature's pixels are held for the batch, and
        its views are made only if one of its pairs is not settled by the whole picture
        (``STOP``).
        """
        todo = [
            k
            for k in range(len(rows_a))
            if (key := _key(shas_a[k], shas_b[k])) not in self.known and key not in self.new
        ]
        self._held = {}
        try:
            self._score_todo(rows_a, shas_a, rows_b, shas_b, todo)
        finally:
            self._held = None

    def _score_todo(
        self, rows_a: list[int], shas_a: list[str], rows_b: list[int], shas_b: list[str], todo: list[int]
    ) -> None:
        best = {k: self._whole(rows_a[k], rows_b[k]) for k in todo}
        view = dict.fromkeys(todo, 0)
        # The two views the best score compared: (pixels of one side's view, the other's whole).
        compared = {k: (self.signatures[rows_a[k]].raw, self.signatures[rows_b[k]].raw) for k in todo}
        # A pair whose colours no view can reconcile scores 0 whatever its structure: no
        # crop, turn or mask is searched for it (most false candidates of a big catalog).
        shut = [
            k for k in todo if self.gate and best[k] < STOP and not self._hue_possible(rows_a[k], rows_b[k])
        ]
        for k in shut:
            best[k] = 0.0
        closed = set(shut)
        open_ = [k for k in todo if best[k] < STOP and k not in closed]
        partners: dict[int, list[tuple[int, int]]] = {}
        for k in open_:
            partners.setdefault(rows_a[k], []).append((k, rows_b[k]))
            partners.setdefault(rows_b[k], []).append((k, rows_a[k]))
        for row, pairs in partners.items():
            for (k, other), value, at, pixels in zip(pairs, *self._search(row, [o for _, o in pairs])):
                if value > best[k]:
                    best[k], view[k], compared[k] = value, at, (pixels, self.signatures[other].raw)
        for k in open_:
            value, at = masked_score(self.signatures[rows_a[k]].raw, self.signatures[rows_b[k]].raw)
            if value > best[k]:
                best[k], view[k] = value, len(BOXES) + len(TURNS) + at
        for k in todo:
            if view[k] < len(BOXES) + len(TURNS) and best[k] >= _NEAR and concentrated(*compared[k]):
                best[k] -= CONCENTRATED_PENALTY
            if 0 < view[k] < len(BOXES):  # a crop: on a plain picture, a zoom of a look-alike
                a, b = self.signatures[rows_a[k]], self.signatures[rows_b[k]]
                best[k] -= FLAT_CROP_PENALTY * max(flat_share(a.raw), flat_share(b.raw))
        for k in todo:
            a, b = self.signatures[rows_a[k]], self.signatures[rows_b[k]]
            key = _key(shas_a[k], shas_b[k])
            value = _combine(a, b, best[k], view[k])
            if not value and best[k] > 0 and a.tint is not None and b.tint is not None:
                # The colours disagree: a coloured overlay (a logo) may be all that differs.
                value, view[k] = self._colour_overlay(a, b, value, view[k])
            self.new[key] = value
            self.views[key] = view[k]

    @staticmethod
    def _colour_overlay(a: _Signature, b: _Signature, value: float, view: int) -> tuple[float, int]:
        """The best masked view whose region, left out, leaves the colours agreeing."""
        assert a.tint is not None and b.tint is not None
        allowed = [m for m in range(len(MASKS)) if _hue_without(a.tint, b.tint, m)]
        score, at = masked_score(a.raw, b.raw, allowed)
        return (score, len(BOXES) + len(TURNS) + at) if score > value else (value, view)

    def _hue_possible(self, row_a: int, row_b: int) -> bool:
        """Whether some view of the pair could pass the colour test of ``_combine`` (as it is,
        cropped by one of BOXES on either side, a turn, or with one of MASKS left out):
        when not, the pair's verdict is 0 whatever its structure. A hair lenient
        (``_HUE_SLACK``), so rounding never shuts a pair the full check would pass."""
        ta, tb = self.signature(row_a).tint, self.signature(row_b).tint
        if ta is None or tb is None or colour_agreement(ta, tb) >= MIN_HUE - _HUE_SLACK:
            return True
        if any(colour_agreement(ta[keep], tb[keep]) >= MIN_HUE - _HUE_SLACK for keep in _MASK_CELLS):
            return True
        return any(
            float((self._cropped_chroma(x) @ _unit_chroma(y)).max()) >= MIN_HUE - _HUE_SLACK
            for x, y in ((row_a, tb), (row_b, ta))
        )

    def _cropped_chroma(self, row: int) -> np.ndarray:
        """Unit chroma vectors (rows) of the 8x8 grid of each crop of BOXES[1:] of ``row``."""
        if row not in self._crop_tints:
            tint = self.signature(row).tint
            assert tint is not None
            cells, weights = _crop_cells()
            crops = sum(weights[k] * tint[cells[k]] for k in range(4)).reshape(-1, 64, 3)
            self._crop_tints[row] = _unit_chroma(crops)
        return self._crop_tints[row]

    def _whole(self, row_a: int, row_b: int) -> float:
        return float(self.signature(row_a).whole @ self.signature(row_b).whole)

    def _search(self, row: int, others: list[int]) -> tuple[list[float], list[int], list[np.ndarray]]:
        """Best score, view and its pixels of ``row``'s crops and turns against each of
        ``others``' whole view: all at _COARSE, the _REFINE best for each at SIDE."""
        gray, _, aspect = self._gray(row)
        coarse = normalize(
            np.vstack([box_views(gray, BOXES, _COARSE), turned_views(gray, aspect, TURNS, _COARSE)]), _COARSE
        )
        rough = _products(np.stack([self.signatures[o].coarse for o in others]), coarse)
        # The best crops and the best turns apart: at 16x16 a crop can outrank the right turn.
        top = np.hstack(
            [_best(rough[:, : len(BOXES)], _REFINE), len(BOXES) + _best(rough[:, len(BOXES) :], _REFINE)]
        )
        wanted = np.unique(top)
        boxes, turns = wanted[wanted < len(BOXES)], wanted[wanted >= len(BOXES)] - len(BOXES)
        raw = np.vstack(
            [box_views(gray, BOXES[boxes]), turned_views(gray, aspect, tuple(TURNS[t] for t in turns))]
        )
        fine = normalize(raw)
        exact = _products(np.stack([self.signatures[o].whole for o in others]), fine)
        cols = np.searchsorted(wanted, top)  # ``fine`` holds the views of ``wanted``, in its order
        j = np.take_along_axis(exact, cols, axis=1).argmax(axis=1)
        picked = cols[np.arange(len(others)), j]
        values = exact[np.arange(len(others)), picked].tolist()
        views = wanted[picked].tolist()
        pixels = list(raw[picked])
        for i, other in enumerate(others):
            if 0 < views[i] < len(BOXES) and _POLISH <= values[i] < STOP:
                values[i], pixels[i] = self._polish(gray, views[i], other, values[i], pixels[i])
        return values, views, pixels

    def _polish(
        self, gray: np.ndarray, view: int, other: int, value: float, pixels: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """The crop ``view`` moved and scaled by up to ``_NUDGE`` of the side, if one of those
        matches ``other`` better: the grid's steps are as large as a document's text lines."""
        raw = box_views(gray, _nudged(BOXES[view]))
        scores = _products(self.signatures[other].whole[None, :], normalize(raw))[0]
        at = int(scores.argmax())
        return (float(scores[at]), raw[at]) if scores[at] > value else (value, pixels)

    def signature(self, row: int) -> _Signature:
        if row not in self.signatures:
            given = self.given.get(row)
            if given is None:
                gray, rgb, _ = self._gray(row)
                given = glance(gray, rgb)
            self.signatures[row] = _signature(*given)
        return self.signatures[row]

    def _gray(self, row: int) -> tuple[np.ndarray, np.ndarray, float]:
        """The thumbnail's pixels, decoded once per ``score_batch`` (held for its searches)."""
        if self._held is not None and row in self._held:
            return self._held[row]
        pixels = self._pixels(row)
        if self._held is not None:
            self._held[row] = pixels
        return pixels

    def tint(self, row: int) -> np.ndarray | None:
        return self.signature(row).tint

    def variant_hashes(self, row: int) -> np.ndarray:
        """pHashes of the cropped and turned variants of a content (``_VARIANT_*``)."""
        gray, _, aspect = self._pixels(row)
        return phashes(
            np.vstack([box_views(gray, _VARIANT_BOXES), turned_views(gray, aspect, _VARIANT_TURNS)])
        )

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
