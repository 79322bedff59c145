"""Dedup's fast forms (issue 13, scale) against the definitions they replace: every crop's
colour agreement from ``CropChromas`` and every mask's from ``best_masked_agreement`` must be
what ``colour_agreement`` gives on the cropped or masked grids one by one (or the colour gate
could shut a pair the full check passes), and ``box_phashes`` the pHashes of the box views."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dedup.colours import (
    CropChromas,
    best_masked_agreement,
    colour_agreement,
    cropped_tint,
    hue_agrees,
)
from pipeline.dedup.scores import MASK_CELLS
from pipeline.dedup.views import BOXES, SIDE, VARIANT_BOXES, box_phashes, box_view_stack, phashes


def _grids(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (8, 8, 3))
    # Smooth grids like a photograph's, and a second one partly of the same colouring.
    smooth = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1)) / 3
    other = 0.6 * smooth + 0.4 * rng.uniform(0, 255, (8, 8, 3))
    return smooth.reshape(64, 3), other.reshape(64, 3)


@pytest.mark.parametrize("seed", range(6))
def test_every_crops_agreement_is_the_one_colour_agreement_gives(seed: int) -> None:
    a, b = _grids(seed)
    crops = CropChromas.of(a)
    one_by_one = np.array([colour_agreement(cropped_tint(a, v), b) for v in range(1, len(BOXES))])
    fast = np.einsum("cnk,ck->n", crops.chroma, _unit(b)) * crops.inverse_norm
    assert np.allclose(fast, one_by_one, atol=1e-12)
    assert crops.best(b) == pytest.approx(one_by_one.max(), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_the_best_masked_agreement_is_the_best_mask(seed: int) -> None:
    a, b = _grids(seed)
    expected = max(colour_agreement(a[keep], b[keep]) for keep in MASK_CELLS)
    assert best_masked_agreement(a, b) == pytest.approx(expected, abs=1e-12)


def test_hue_agrees_takes_a_crop_that_reconciles_the_colours_and_refuses_other_colourings() -> None:
    a, _ = _grids(0)
    grid = a.reshape(8, 8, 3)
    # A 12.5% crop from the top-left corner, enlarged back to 8x8: its colours agree with
    # that crop of the original only.
    view = int(np.flatnonzero((BOXES[:, 0] == 0) & (BOXES[:, 1] == 0) & np.isclose(BOXES[:, 2], 0.875))[0])
    zoomed = cropped_tint(a, view)
    assert colour_agreement(zoomed, a) < 0.999
    assert hue_agrees(zoomed, a) and hue_agrees(a, zoomed)
    recoloured = grid[:, :, ::-1].reshape(64, 3)  # red and blue swapped
    assert not hue_agrees(recoloured, a)


def _unit(grid: np.ndarray) -> np.ndarray:
    x = grid - grid.mean(axis=1, keepdims=True)
    return (x / np.sqrt((x * x).sum())).T


@pytest.mark.parametrize(("h", "w"), [(128, 128), (96, 128), (75, 53)])
def test_box_phashes_are_the_phashes_of_the_box_views(h: int, w: int) -> None:
    # The variant pass hashes its crops in the DCT domain; the search compares them with
    # pHashes of views, so they must be the very bits of the views' pHashes.
    from conftest import photo

    gray = np.stack(
        [np.asarray(photo(w, h, seed).convert("L"), np.float64) for seed in range(5)]
        + [np.full((h, w), 77.0)]  # flat: every coefficient ties
    )
    boxes = np.vstack([VARIANT_BOXES, BOXES[::37]])
    views = box_view_stack(gray, boxes)
    expected = phashes(views.reshape(-1, SIDE * SIDE)).reshape(len(gray), len(boxes))
    assert (box_phashes(gray, boxes) == expected).all()
