"""Whether two thumbnails agree in colour: 8x8 chroma grids, whole, cropped or with an overlay left out."""

from __future__ import annotations

import functools

import numpy as np

from pipeline.dedup.scores import MASK_CELLS
from pipeline.dedup.views import BOXES, box_view_stack, box_views

MIN_HUE = 0.85  # chroma-grid correlation two colour pictures need to be one picture


_COLOURFUL = 4.0  # mean channel spread (0-255) above which a picture counts as in colour


HUE_SLACK = 1e-6  # the colour gate passes a pair this close to MIN_HUE: the full check decides


@functools.cache
def crop_cells() -> tuple[np.ndarray, np.ndarray]:
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


def unit_chroma(grids: np.ndarray) -> np.ndarray:
    """8x8 RGB grids' chroma (RGB minus its grey), each as one unit vector (a row; a single
    grid gives one flat vector): dot products of two are ``colour_agreement``."""
    x = grids - grids.mean(axis=-1, keepdims=True)
    x = x.reshape(*grids.shape[:-2], -1)
    return x / np.maximum(np.sqrt((x * x).sum(axis=-1, keepdims=True)), 1e-12)


def is_colourful(grid: np.ndarray) -> bool:
    return float(np.abs(grid - grid.mean(axis=1, keepdims=True)).mean()) >= _COLOURFUL


def colour_agreement(ca: np.ndarray, cb: np.ndarray) -> float:
    """Correlation of the chroma vectors (RGB minus its grey) of two 8x8 RGB grids.

    Brightness, contrast and saturation changes scale those vectors but keep their
    direction; another object colour turns them.
    """
    xa, xb = ca - ca.mean(axis=1, keepdims=True), cb - cb.mean(axis=1, keepdims=True)
    return float((xa * xb).sum() / np.sqrt((xa * xa).sum() * (xb * xb).sum()))


def cropped_tint(tint: np.ndarray, view: int) -> np.ndarray:
    """The 8x8 RGB grid of the box of ``view`` (a crop of BOXES), resampled from ``tint``."""
    if not 0 < view < len(BOXES):
        return tint
    grid = tint.reshape(8, 8, 3)
    return np.stack([box_views(grid[:, :, c], BOXES[view : view + 1], side=8)[0] for c in range(3)], axis=1)


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


def hue_without(ca: np.ndarray, cb: np.ndarray, mask: int) -> bool:
    """Whether two 8x8 RGB grids agree on the cells MASKS[mask] keeps whole."""
    keep = MASK_CELLS[mask]
    return colour_agreement(ca[keep], cb[keep]) >= MIN_HUE
