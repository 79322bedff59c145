"""Views of a thumbnail for the check and the candidate search: crops and turns sampled at
16 or 32 px, normalised for correlation, and their pHashes."""

from __future__ import annotations

import functools
import math

import numpy as np

SIDE = 32


COARSE = 16  # side of the views every crop and turn is first scored at


SOURCE = 128  # thumbnails are read at this size, then sampled


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
VARIANT_BOXES = np.array(
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


BAND_COLUMNS = tuple(range(len(VARIANT_BOXES) - 4, len(VARIANT_BOXES)))  # in variant_hashes' rows


VARIANT_TURNS = tuple((a, inscribed) for inscribed in (False, True) for a in (-4.0, -2.0, 2.0, 4.0))


def variant_hash_stack(gray: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """(images, variants) pHashes of the ``VARIANT_BOXES`` then ``VARIANT_TURNS`` views of each
    of ``gray`` (images, h, w), which the candidate search looks up. (Turns sampled once per
    pixel of a read halved cost a third, but reached 12% fewer of seed 1's 5-degree turns:
    the supersampling is what keeps their pHashes near the stored ones.)"""
    turned = turned_view_stack(gray, aspect, VARIANT_TURNS)
    return np.hstack(
        [box_phashes(gray, VARIANT_BOXES), phashes(turned.reshape(-1, SIDE * SIDE)).reshape(len(gray), -1)]
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
    # float32 samples: half the memory the gathers walk (1.7x faster), 4e-5 off at most.
    flat = gray.reshape(count, -1).astype(np.float32)
    for value in np.unique(aspect):
        these = np.flatnonzero(aspect == value)
        pixels = flat[these]
        for k, (at, weights) in enumerate(_turn_samples(float(value), turns, h, w, side)):
            sampled = np.einsum("mkij,kij->mij", pixels[:, at], weights, optimize=False)
            views[these, k] = sampled.reshape(len(these), side, 2, side, 2).mean(axis=(2, 4)).reshape(len(these), -1)
    return views


@functools.lru_cache(maxsize=16)  # ~1.5 MB each
def _turn_samples(
    aspect: float, turns: tuple[tuple[float, bool], ...], h: int, w: int, side: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per turn: the 4 pixels each of the (2 side)^2 samples reads (4, n, n) and their bilinear
    weights (float32), 0 for the samples that fall outside the picture."""
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
        weights = np.stack([(1 - fv) * (1 - fu), (1 - fv) * fu, fv * (1 - fu), fv * fu]) * inside
        found.append((pixels, weights.astype(np.float32)))
    return found


def _dct_rows(n: int, keep: int) -> np.ndarray:
    k, i = np.arange(keep)[:, None], np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_rows(SIDE, 8)


def phashes(views: np.ndarray) -> np.ndarray:
    """pHash (as ``image/hashes.phash``: 8x8 low DCT coefficients above their median) of each
    32x32 view, as uint64."""
    img = views.reshape(-1, SIDE, SIDE)
    # Rows then columns: one 4-index einsum (no BLAS, see products) cost 4x as much.
    rows = np.einsum("ij,kjl->kil", _DCT, img, optimize=False)
    return _hash_bits(np.einsum("kil,ml->kim", rows, _DCT, optimize=False))


def _hash_bits(low: np.ndarray) -> np.ndarray:
    """(..., 8, 8) low DCT coefficients -> a pHash each: the bits of those above their median."""
    low = np.round(low, 6).reshape(-1, 64)
    ranked = np.sort(low, axis=1)
    bits = low > ((ranked[:, 31] + ranked[:, 32]) / 2)[:, None]
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def box_phashes(gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(images, boxes) pHashes of the area-averaged SIDE x SIDE views of each box of each of
    ``gray`` (images, h, w): ``phashes(box_view_stack(gray, boxes))``, bit for bit, without
    making the views. Averaging over a box and the DCT are both linear and act on rows and
    columns apart, so a box's 8x8 low coefficients are ``Y @ gray @ X.T`` with Y, X (8 x h,
    8 x w) the DCT rows times the box's area weights; boxes that cut the rows alike share
    ``Y @ gray``, one BLAS product a stack. ~0.25 ms a thumbnail for the 26 variant boxes,
    against ~1 ms through the views."""
    count, h, w = gray.shape
    rows, cols, row_of, col_of = _box_dct(boxes.tobytes(), len(boxes), h, w)
    cut = np.matmul(rows, gray).reshape(count, -1, 8, w)[:, row_of]  # (images, boxes, 8, w)
    low = np.einsum("nbiw,bjw->nbij", cut, cols[col_of], optimize=False)
    return _hash_bits(low).reshape(count, len(boxes))


@functools.lru_cache(maxsize=8)
def _box_dct(boxes_bytes: bytes, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The DCT rows times the area weights of each distinct row cut (stacked: cuts * 8 x h)
    and column cut (cuts, 8, w) of ``boxes``, and each box's row and column cut."""
    boxes = np.frombuffer(boxes_bytes).reshape(n, 4)
    ys, row_of = np.unique(boxes[:, [1, 3]], axis=0, return_inverse=True)
    xs, col_of = np.unique(boxes[:, [0, 2]], axis=0, return_inverse=True)
    rows = np.concatenate([_DCT @ _area_weights(lo, hi, h) for lo, hi in ys])
    cols = np.stack([_DCT @ _area_weights(lo, hi, w) for lo, hi in xs])
    return rows, cols, row_of.ravel(), col_of.ravel()


def _area_weights(lo: float, hi: float, n: int) -> np.ndarray:
    """(SIDE, n): the share of each of ``n`` pixels in each of SIDE equal cells of [lo, hi)
    (fractions of the side), each cell's row summing to 1: area averaging."""
    edges = (lo + (hi - lo) * np.linspace(0.0, 1.0, SIDE + 1)) * n
    pixel = np.arange(n)
    cover = np.minimum(edges[1:, None], pixel + 1.0) - np.maximum(edges[:-1, None], pixel)
    cover = np.clip(cover, 0.0, None)
    return cover / cover.sum(axis=1, keepdims=True)


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


def products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` without BLAS: OpenBLAS threads spin against each other on a busy machine
    and made these small products 100x slower (measured on the 2-core CI box)."""
    return np.einsum("ij,kj->ik", a, b, optimize=False)


NUDGE = 0.00625  # of the side: half the step of the crop grid at 5%, a fifth of a pixel at 32


def nudged(box: np.ndarray) -> np.ndarray:
    """``box`` moved by -1, 0, +1 nudges in x and y, and grown or shrunk by one, inside [0, 1]."""
    x0, y0, x1, y1 = box
    found = []
    for grow in (-NUDGE, 0.0, NUDGE):
        w, h = min(1.0, x1 - x0 + grow), min(1.0, y1 - y0 + grow)
        for dx in (-NUDGE, 0.0, NUDGE):
            for dy in (-NUDGE, 0.0, NUDGE):
                nx = min(max(0.0, x0 + dx - grow / 2), 1.0 - w)
                ny = min(max(0.0, y0 + dy - grow / 2), 1.0 - h)
                found.append((nx, ny, nx + w, ny + h))
    return np.array(found)


def edges(img: np.ndarray) -> np.ndarray:
    gx, gy = np.diff(img, axis=-1)[..., :-1, :], np.diff(img, axis=-2)[..., :, :-1]
    return np.sqrt(gx * gx + gy * gy)
