"""Local edits inside a verified overlap: where B differs from A although the rest agrees.

A retouched copy (a pasted or cloned patch, an erased cell) aligns with its source everywhere
except in the edited place. With the overlap aligned (``locate``), B's grey levels matched to
A's (quantile mapping over the overlap: contrast, gamma and brightness edits are global, not
local) and both smoothed (``params.EDIT_SMOOTHING``: noise and JPEG blocks cancel), each grid
cell wholly inside the overlap gets its mean absolute difference; cells far above the typical
cell are reported. A copy that was only re-encoded, resized, turned or recoloured has none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .heatmaps import cell_index, grid_shape
from .params import EDIT_FACTOR, EDIT_MIN_DIFFERENCE, EDIT_SMOOTHING
from .prepare import fill_of_free_turn
from .transform import warp_image


@dataclass(frozen=True)
class LocalEdits:
    """Cells of A's heatmap grid where the aligned copy differs locally."""

    cells: tuple[tuple[int, int], ...]
    """``(row, col)`` of each differing cell in ``grid_shape`` (usually that of
    ``MatchResult.heatmap_a``; finer for a small crop of a large image)."""
    grid_shape: tuple[int, int]
    box_a: tuple[int, int, int, int] | None
    """``(x0, y0, x1, y1)`` pixels of A around the differing cells, or None."""
    largest: float
    """Largest cell difference (grey levels 0-1, smoothed)."""
    typical: float
    """Median cell difference: what re-encoding alone leaves."""

    def to_dict(self) -> dict:
        return {
            "cells": [list(c) for c in self.cells],
            "grid_shape": list(self.grid_shape),
            "box_a": None if self.box_a is None else list(self.box_a),
            "largest": round(self.largest, 4),
            "typical": round(self.typical, 4),
        }


def match_levels(src: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``src`` mapped onto ``ref``'s grey levels by matching 65 quantiles over ``valid``."""
    q = np.linspace(0, 1, 65)
    sq = np.quantile(src[valid], q)
    rq = np.quantile(ref[valid], q)
    sq = np.maximum.accumulate(sq + np.arange(len(q)) * 1e-9)  # strictly increasing for interp
    return np.interp(src, sq, rq)


def local_edits(
    scaled: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    m_full: np.ndarray,
    grid: int,
    region_a: np.ndarray | None = None,
) -> LocalEdits | None:
    """Cells where the copy B, aligned by ``m_full`` (B -> A, full-size pixels), differs locally
    from A, compared at one common scale (``scaled``: what ``prepare.common_scale`` returns).
    The grid is ``grid`` cells along A's longer side, finer (up to 4x) when fewer than 8 cells
    lie wholly inside the overlap (a small crop of a large image); None if even then. The box
    is in full-size pixels of A. ``region_a``: a full-size mask of A to keep the comparison to
    (a matched panel: cells across its border would compare the gutter and the neighbours)."""
    ga, gb, to_a, to_b = scaled
    m = to_a @ m_full @ np.linalg.inv(to_b)
    keep = None
    if region_a is not None:
        import cv2

        keep = cv2.resize(
            region_a.astype(np.uint8), ga.shape[::-1], interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    found = None
    for g in (grid, 2 * grid, 4 * grid):
        found = _local_edits(ga, gb, m, g, keep)
        if found is not None:
            break
    if found is None or found.box_a is None or to_a[0, 0] == 1:
        return found
    x0, y0, x1, y1 = found.box_a
    fx, fy = to_a[0, 0], to_a[1, 1]
    return replace(
        found, box_a=(int(x0 / fx), int(y0 / fy), int(np.ceil(x1 / fx)), int(np.ceil(y1 / fy)))
    )


def _local_edits(
    grey_a: np.ndarray,
    grey_b: np.ndarray,
    m_b_to_a: np.ndarray,
    grid: int,
    keep: np.ndarray | None = None,
) -> LocalEdits | None:
    from scipy.ndimage import gaussian_filter

    warped, valid = warp_image(grey_b, np.linalg.inv(m_b_to_a), grey_a.shape)
    if keep is not None:
        valid &= keep
    sigma = max(1.0, min(grey_a.shape) * EDIT_SMOOTHING)
    fill = fill_of_free_turn(grey_b, m_b_to_a, grey_a.shape, margin=int(np.ceil(3 * sigma)) + 2)
    if fill is not None:  # B's filled corners are not in A: not an edit
        valid &= ~fill[1]
    if valid.sum() < 64:
        return None
    # levels matched unclipped, then both clipped at A's range: one saturation for both (each
    # image's own clipping differs when a crop changes the histogram; unclipped bright specks
    # differ after resampling)
    warped = np.clip(
        match_levels(warped.astype(np.float64), grey_a.astype(np.float64), valid), 0, 1
    )
    grey_a = np.clip(grey_a.astype(np.float64), 0, 1)
    inside = gaussian_filter(valid.astype(np.float64), sigma)
    smooth_a = gaussian_filter(grey_a * valid, sigma)
    smooth_b = gaussian_filter(warped * valid, sigma)
    diff = np.abs(smooth_a - smooth_b) / np.maximum(inside, 1e-6)
    full = (inside > 0.999).ravel()
    gshape = grid_shape(grey_a.shape, grid)
    cells = cell_index(grey_a.shape, gshape).ravel()
    k = gshape[0] * gshape[1]
    count = np.bincount(cells, minlength=k)
    covered = np.bincount(cells, weights=full.astype(np.float64), minlength=k)
    mean = np.bincount(cells, weights=diff.ravel() * full, minlength=k) / np.maximum(covered, 1)
    whole = covered >= 0.98 * np.maximum(count, 1)
    if whole.sum() < 8:
        return None
    typical = float(np.median(mean[whole]))
    flagged = np.flatnonzero(whole & (mean > max(EDIT_MIN_DIFFERENCE, EDIT_FACTOR * typical)))
    rc = [(int(i) // gshape[1], int(i) % gshape[1]) for i in flagged]
    box = None
    if rc:
        limit = max(EDIT_MIN_DIFFERENCE, EDIT_FACTOR * typical)
        box = _edit_box(diff.reshape(grey_a.shape) * full.reshape(grey_a.shape), rc, gshape, limit)
    return LocalEdits(tuple(rc), tuple(gshape), box, float(mean[whole].max()), typical)


def _edit_box(
    diff: np.ndarray, cells: list[tuple[int, int]], gshape: tuple[int, int], limit: float
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` around the pixels that differ by more than ``limit`` within the
    flagged cells and their neighbours (an edit rarely follows the grid), else the cells' box."""
    h, w = diff.shape
    ch, cw = h / gshape[0], w / gshape[1]
    rows = [r for r, _ in cells]
    cols = [c for _, c in cells]
    x0, y0 = int(min(cols) * cw), int(min(rows) * ch)
    x1, y1 = int(np.ceil((max(cols) + 1) * cw)), int(np.ceil((max(rows) + 1) * ch))
    near = np.zeros_like(diff, dtype=bool)
    for r, c in cells:
        near[
            max(0, int((r - 1) * ch)) : int(np.ceil((r + 2) * ch)),
            max(0, int((c - 1) * cw)) : int(np.ceil((c + 2) * cw)),
        ] = True
    ys, xs = np.nonzero(near & (diff > limit))
    if len(xs) == 0:
        return (x0, y0, x1, y1)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
