"""Whether two thumbnails agree in colour: 8x8 chroma grids, whole, cropped or with an overlay left out."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pipeline.dedup.scores import MASK_CELLS
from pipeline.dedup.views import BOXES, box_view_stack, box_views

MIN_HUE = 0.85  # chroma-grid correlation two colour pictures need to be one picture


_COLOURFUL = 4.0  # mean channel spread (0-255) above which a picture counts as in colour


HUE_SLACK = 1e-6  # the colour gate passes a pair this close to MIN_HUE: the full check decides


@functools.cache
def _crop_taps() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """How the 8x8 grid of each crop of BOXES[1:] is made from the whole grid, in two steps
    of two taps each (a crop of at most 12.5% makes each cell from at most 2 x 2 cells):
    rows first, for each distinct way a crop cuts the rows (``CropChromas``), then columns.
    The same grids as ``box_views`` per channel, to ~1e-15."""
    eye = np.eye(8)
    n = len(BOXES) - 1
    rows = box_view_stack(np.repeat(eye[:, :, None], 8, axis=2), BOXES[1:], 8).reshape(8, n, 8, 8)
    cols = box_view_stack(np.repeat(eye[:, None, :], 8, axis=1), BOXES[1:], 8).reshape(8, n, 8, 8)
    ay, ax = rows[:, :, :, 0].transpose(1, 2, 0), cols[:, :, 0, :].transpose(1, 2, 0)  # (crop, out, in)
    iy, ix = (np.sort(np.argsort(-a, axis=2)[:, :, :2], axis=2) for a in (ay, ax))
    wy, wx = np.take_along_axis(ay, iy, 2), np.take_along_axis(ax, ix, 2)
    # 81 anchors x 5 depths share ~50 row cuts: each is applied to the grid once.
    cuts, cut_of = np.unique(np.hstack([iy.reshape(n, -1), wy.reshape(n, -1)]), axis=0, return_inverse=True)
    cut_rows, cut_weights = cuts[:, :16].astype(np.int64).reshape(-1, 8, 2), cuts[:, 16:].reshape(-1, 8, 2)
    out_row = np.arange(8)[None, :, None]
    at = tuple((cut_of.reshape(n, 1, 1) * 64 + out_row * 8 + ix[:, None, :, t]).ravel() for t in (0, 1))
    weights = tuple(np.broadcast_to(wx[:, None, :, t], (n, 8, 8)).ravel().copy() for t in (0, 1))
    return cut_rows, cut_weights[:, :, :, None, None], at, weights


@dataclass(frozen=True, slots=True)
class CropChromas:
    """The chroma (RGB minus its grey) of the 8x8 grid of every crop of BOXES[1:] of one
    picture, as (3, crops, 64), and one over each crop's norm: ``best`` is then the highest
    ``colour_agreement`` of any crop with another grid in one product (the colour gate's
    bulk, ~0.3 ms a thumbnail: 5x less than gathering each crop's 4 cells and normalising)."""

    chroma: np.ndarray
    inverse_norm: np.ndarray

    @classmethod
    def of(cls, tint: np.ndarray) -> CropChromas:
        cut_rows, cut_weights, at, weights = _crop_taps()
        # Chroma is linear in RGB, so the crops of the chroma are the chroma of the crops.
        grid = (tint - tint.mean(axis=1, keepdims=True)).reshape(8, 8, 3)
        cut = cut_weights[:, :, 0] * grid[cut_rows[:, :, 0]] + cut_weights[:, :, 1] * grid[cut_rows[:, :, 1]]
        by_channel = np.ascontiguousarray(cut.reshape(-1, 3).T)  # (3, cuts * 64)
        chroma = np.take(by_channel, at[0], axis=1)
        chroma *= weights[0]
        chroma += np.take(by_channel, at[1], axis=1) * weights[1]
        chroma = chroma.reshape(3, len(BOXES) - 1, 64)
        return cls(chroma, 1.0 / np.maximum(np.sqrt(np.einsum("cnk,cnk->n", chroma, chroma)), 1e-12))

    def best(self, other: np.ndarray) -> float:
        """The highest colour agreement of a crop with the 8x8 RGB grid ``other``."""
        unit = unit_chroma(other).reshape(64, 3).T
        return float((np.einsum("cnk,ck->n", self.chroma, unit) * self.inverse_norm).max())


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
    return any(CropChromas.of(x).best(y) >= MIN_HUE for x, y in ((ca, cb), (cb, ca)))


_MASK_MATRIX = np.stack([np.isin(np.arange(64), keep) for keep in MASK_CELLS]).astype(np.float64)


def best_masked_agreement(ca: np.ndarray, cb: np.ndarray) -> float:
    """The highest ``colour_agreement`` of two 8x8 RGB grids on the cells one of MASKS keeps
    whole: chroma is per cell, so each mask's sums are a product of the per-cell sums."""
    xa, xb = ca - ca.mean(axis=1, keepdims=True), cb - cb.mean(axis=1, keepdims=True)
    per_cell = np.stack([(xa * xb).sum(axis=1), (xa * xa).sum(axis=1), (xb * xb).sum(axis=1)], axis=1)
    num, sa, sb = (_MASK_MATRIX @ per_cell).T
    return float((num / np.sqrt(np.maximum(sa * sb, 1e-300))).max())


def hue_without(ca: np.ndarray, cb: np.ndarray, mask: int) -> bool:
    """Whether two 8x8 RGB grids agree on the cells MASKS[mask] keeps whole."""
    keep = MASK_CELLS[mask]
    return colour_agreement(ca[keep], cb[keep]) >= MIN_HUE
