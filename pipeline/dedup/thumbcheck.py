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
~12 ms of CPU a pair, the gate ~0.3 ms a thumbnail: ``colours.CropChromas``); and a
thumbnail's signature is made from its
``Glance`` (the whole view and the colour grid, 2.2 KB), which the variant pass already
made from the same read, so a pair settled by its whole views or its colours decodes
nothing (``given``).

``variant_hashes`` gives the candidate search pHashes of crops (5%, 10%: centre and
corners; 10% off one edge) and turns (+-2, +-4 degrees) of each thumbnail, computed at dedup time, so a copy
cropped or turned past the pHash radius still becomes a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.dedup.colours import (
    HUE_SLACK,
    MIN_HUE,
    CropChromas,
    best_masked_agreement,
    colour_agreement,
    cropped_tint,
    hue_without,
    is_colourful,
)
from pipeline.dedup.scores import (
    CONCENTRATED_PENALTY,
    FLAT_CROP_PENALTY,
    MASKS,
    NEAR,
    concentrated,
    flat_share,
    masked_score,
    top_k,
)
from pipeline.dedup.views import (
    BOXES,
    COARSE,
    SIDE,
    SOURCE,
    TURNS,
    box_view_stack,
    box_views,
    normalize,
    nudged,
    products,
    turned_views,
    variant_hash_stack,
)
from pipeline.errors import DedupError
from pipeline.image.view import thumbnail_view

# Bump when the check changes: cached verdicts of another version are ignored (9: STOP 0.93,
# flat crops 0.08 less).
VERSION = 9


_REFINE = 3  # best coarse crops, and turns, of each side of a pair scored again at SIDE


STOP = 0.93  # a whole-view score this high is final: no rule asks for more (dedup: 0.90, 0.93)


_NO_THUMBS = (
    "restore the thumbnails (rerun `pipeline run` with --force), or pass --no-verify "
    "to group on pHash and dHash alone"
)


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
    """The glance of a thumbnail read as ``thumbnail_view`` reads it (``SOURCE`` px)."""
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
    half = SIDE // COARSE
    coarse = raw.reshape(COARSE, half, COARSE, half).mean(axis=(1, 3)).reshape(1, -1)
    rgb = grid.astype(np.float64)
    return _Signature(
        whole=normalize(raw[None])[0],
        coarse=normalize(coarse, COARSE)[0],
        raw=raw.astype(np.float32),
        mean=float(raw.mean()),
        tint=rgb if is_colourful(rgb) else None,
    )


@dataclass(frozen=True, slots=True)
class _Signature:
    whole: np.ndarray  # the normalised whole view (intensity half, edge half)
    coarse: np.ndarray  # the same at COARSE x COARSE
    raw: np.ndarray  # the whole view's pixels (SIDE x SIDE), for the masked views
    mean: float  # grey level, for flat pictures whose views are all zero
    tint: np.ndarray | None  # 8x8 RGB grid (64, 3) if the picture is in colour


def _hue_agrees(a: _Signature, b: _Signature, view: int) -> bool:
    if a.tint is None or b.tint is None or colour_agreement(a.tint, b.tint) >= MIN_HUE:
        return True
    if view >= len(BOXES) + len(TURNS):  # an overlay left out: its colours too
        return hue_without(a.tint, b.tint, view - len(BOXES) - len(TURNS))
    # A cropped copy's grid covers part of its original's: compare it with that part.
    return (
        max(
            colour_agreement(cropped_tint(a.tint, view), b.tint),
            colour_agreement(a.tint, cropped_tint(b.tint, view)),
        )
        >= MIN_HUE
    )


def _combine(a: _Signature, b: _Signature, structure: float, view: int = 0) -> float:
    if not _hue_agrees(a, b, view):
        return 0.0
    if not a.whole.any() and not b.whole.any():  # both flat: same picture iff same grey level
        return 1.0 if abs(a.mean - b.mean) < 8 else 0.0
    return structure


_POLISH = 0.80  # crop matches from here up to STOP are nudged (_polish)


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
        self._crop_tints: dict[int, CropChromas] = {}
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
            if view[k] < len(BOXES) + len(TURNS) and best[k] >= NEAR and concentrated(*compared[k]):
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
        allowed = [m for m in range(len(MASKS)) if hue_without(a.tint, b.tint, m)]
        score, at = masked_score(a.raw, b.raw, allowed)
        return (score, len(BOXES) + len(TURNS) + at) if score > value else (value, view)

    def _hue_possible(self, row_a: int, row_b: int) -> bool:
        """Whether some view of the pair could pass the colour test of ``_combine`` (as it is,
        cropped by one of BOXES on either side, a turn, or with one of MASKS left out):
        when not, the pair's verdict is 0 whatever its structure. A hair lenient
        (``HUE_SLACK``), so rounding never shuts a pair the full check would pass."""
        ta, tb = self.signature(row_a).tint, self.signature(row_b).tint
        if ta is None or tb is None or colour_agreement(ta, tb) >= MIN_HUE - HUE_SLACK:
            return True
        if best_masked_agreement(ta, tb) >= MIN_HUE - HUE_SLACK:
            return True
        return any(
            self._cropped_chroma(x).best(y) >= MIN_HUE - HUE_SLACK for x, y in ((row_a, tb), (row_b, ta))
        )

    def _cropped_chroma(self, row: int) -> CropChromas:
        """The chroma of the 8x8 grid of each crop of BOXES[1:] of ``row`` (kept for the batch)."""
        if row not in self._crop_tints:
            tint = self.signature(row).tint
            assert tint is not None
            self._crop_tints[row] = CropChromas.of(tint)
        return self._crop_tints[row]

    def _whole(self, row_a: int, row_b: int) -> float:
        return float(self.signature(row_a).whole @ self.signature(row_b).whole)

    def _search(self, row: int, others: list[int]) -> tuple[list[float], list[int], list[np.ndarray]]:
        """Best score, view and its pixels of ``row``'s crops and turns against each of
        ``others``' whole view: all at COARSE, the _REFINE best for each at SIDE."""
        gray, _, aspect = self._gray(row)
        coarse = normalize(
            np.vstack([box_views(gray, BOXES, COARSE), turned_views(gray, aspect, TURNS, COARSE)]), COARSE
        )
        rough = products(np.stack([self.signatures[o].coarse for o in others]), coarse)
        # The best crops and the best turns apart: at 16x16 a crop can outrank the right turn.
        top = np.hstack(
            [top_k(rough[:, : len(BOXES)], _REFINE), len(BOXES) + top_k(rough[:, len(BOXES) :], _REFINE)]
        )
        wanted = np.unique(top)
        boxes, turns = wanted[wanted < len(BOXES)], wanted[wanted >= len(BOXES)] - len(BOXES)
        raw = np.vstack(
            [box_views(gray, BOXES[boxes]), turned_views(gray, aspect, tuple(TURNS[t] for t in turns))]
        )
        fine = normalize(raw)
        exact = products(np.stack([self.signatures[o].whole for o in others]), fine)
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
        """The crop ``view`` moved and scaled by up to ``NUDGE`` of the side, if one of those
        matches ``other`` better: the grid's steps are as large as a document's text lines."""
        raw = box_views(gray, nudged(BOXES[view]))
        scores = products(self.signatures[other].whole[None, :], normalize(raw))[0]
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
        return variant_hash_stack(gray[None], np.array([aspect]))[0]

    def _pixels(self, row: int) -> tuple[np.ndarray, np.ndarray, float]:
        rel = self.thumbs.get(row)
        if not rel:
            raise DedupError(f"row {row} has no thumbnail to check near duplicates on; {_NO_THUMBS}")
        try:
            return thumbnail_view(str(self.out / rel), SOURCE)
        except OSError as exc:
            raise DedupError(
                f"thumbnail {rel} of row {row} is missing or unreadable ({exc}); {_NO_THUMBS}"
            ) from exc


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)
