"""Per-tile heatmaps: aligned pixel agreement, or the model's similarity of windows (calibrated
probability, so unrelated images stay dark)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..runtime import StopFn
from .params import GRID, MIN_IMAGE_SIDE, SNAP_DEGREES, SNAP_SCALE
from .prepare import as_float_rgb, fill_of_free_turn
from .transform import warp_image

if TYPE_CHECKING:  # torch is imported lazily: keypoint matching does not need it
    from ..model import BTAModel


def upsample_heatmap(
    heatmap: np.ndarray, shape: tuple[int, ...], smooth: bool = False
) -> np.ndarray:
    """A tile-grid heatmap at image size ``shape[:2]`` (nearest cells, or bilinear with ``smooth``)."""
    from skimage.transform import resize

    h = np.asarray(heatmap, dtype=np.float32)
    out = resize(h, tuple(shape[:2]), order=1 if smooth else 0, mode="edge", anti_aliasing=False)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def grid_shape(shape: tuple[int, ...], grid: int) -> tuple[int, int]:
    h, w = shape[:2]
    long = max(h, w)
    return max(1, round(grid * h / long)), max(1, round(grid * w / long))


def cell_index(shape: tuple[int, int], gshape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    rows = (np.arange(h) * gshape[0]) // h
    cols = (np.arange(w) * gshape[1]) // w
    return rows[:, None] * gshape[1] + cols[None, :]


def _match_levels(ref: np.ndarray, moved: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``moved`` mapped linearly onto ``ref``'s grey levels over the overlap (least squares):
    each image's own contrast stretch, or a global brightness/contrast edit, is not a local
    disagreement of flat cells."""
    b = moved.astype(np.float64)
    if valid.sum() < 16:
        return b
    x, y = ref[valid].astype(np.float64), b[valid]
    vx = x.var()
    if vx < 1e-8:
        return b
    slope = float(((x - x.mean()) * (y - y.mean())).mean() / vx)
    if slope < 0.2:  # inverted or unrelated levels: leave them as they are
        return b
    return (b - (y.mean() - slope * x.mean())) / slope


def _agreement_grid(
    ref: np.ndarray, moved: np.ndarray, valid: np.ndarray, gshape: tuple[int, int]
) -> np.ndarray:
    """Per-cell agreement of two aligned grey images: valid fraction x local correlation.

    Cells flat in both images count as agreeing when their brightness matches (after matching
    the grey levels of the whole overlap, ``_match_levels``), so plain background inside a
    copied region is not shown as a mismatch.
    """
    cells = cell_index(ref.shape, gshape).ravel()
    k = gshape[0] * gshape[1]
    v = valid.ravel().astype(np.float64)
    a = ref.ravel().astype(np.float64) * v
    b = _match_levels(ref.ravel(), moved.ravel(), valid.ravel()) * v

    def bsum(x):
        return np.bincount(cells, weights=x, minlength=k)

    total = np.bincount(cells, minlength=k).astype(np.float64)
    n = bsum(v)
    nn = np.maximum(n, 1)
    ma, mb = bsum(a) / nn, bsum(b) / nn
    va = np.maximum(bsum(a * a) / nn - ma * ma, 0)
    vb = np.maximum(bsum(b * b) / nn - mb * mb, 0)
    cov = bsum(a * b) / nn - ma * mb
    flat = 0.03**2
    ncc = cov / np.sqrt(np.maximum(va, flat) * np.maximum(vb, flat))
    both_flat = (va < flat) & (vb < flat)
    agree = np.where(both_flat, np.clip(1 - np.abs(ma - mb) / 0.1, 0, 1), np.clip(ncc, 0, 1))
    frac = np.where(total > 0, n / np.maximum(total, 1), 0)
    out = np.where(n >= 4, agree * frac, 0.0)
    return out.reshape(gshape).astype(np.float32)


def snapped(m: np.ndarray, centre_b: tuple[float, float]) -> np.ndarray | None:
    """``m`` (B -> A pixels) with its linear part rounded to an exact rotation/flip, when it is
    within ``SNAP_SCALE`` / ``SNAP_DEGREES`` of one (and no shear); else None. The shift keeps
    B's centre ``centre_b`` (x, y) where ``m`` puts it, floored to whole pixels (the caller
    also tries one pixel more on each axis)."""
    lin = m[:2, :2]
    exact = np.round(lin)
    if not (np.abs(exact).sum(axis=0) == 1).all() or abs(abs(np.linalg.det(exact)) - 1) > 0:
        return None
    scale = np.sqrt(abs(np.linalg.det(lin)))
    cos = np.clip(np.trace(exact.T @ lin) / (2 * scale), -1, 1)
    if abs(scale - 1) > SNAP_SCALE or np.degrees(np.arccos(cos)) > SNAP_DEGREES:
        return None
    if np.abs(lin / scale - exact * np.sign(cos)).max() > 2 * np.sin(np.radians(SNAP_DEGREES)):
        return None  # shear, not a turn
    c = np.asarray(centre_b, dtype=np.float64)
    out = np.eye(3)
    out[:2, :2] = exact
    out[:2, 2] = np.floor(lin @ c + m[:2, 2] - exact @ c)
    return out


def _covered_mean(heat: np.ndarray) -> float:
    inside = heat[heat > 0]
    return float(inside.mean()) if inside.size else 0.0


def full_size_heatmaps(
    scaled: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    m_full: np.ndarray,
    shape_b: tuple[int, int],
    grid: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Agreement heatmaps of two grey images at one common scale (``scaled``: what
    ``prepare.common_scale`` returns) aligned by ``m_full`` (B -> A, full-size pixels); a
    near-exact transform is snapped (:func:`snapped`) when that agrees at least as well.
    Returns the two grids and the matrix used (full-size coordinates)."""
    ga, gb, to_a, to_b = scaled

    def heat(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return alignment_heatmaps(ga, gb, to_a @ m @ np.linalg.inv(to_b), grid)

    best_m, (heat_a, heat_b) = m_full, heat(m_full)
    base = snapped(m_full, ((shape_b[1] - 1) / 2, (shape_b[0] - 1) / 2))
    if base is not None:  # the whole-pixel shifts around the fitted one (a fit can be 0.5 off)
        for dx, dy in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
            snap = base.copy()
            snap[:2, 2] += (dx, dy)
            sa, sb = heat(snap)
            if sa.mean() + sb.mean() >= heat_a.mean() + heat_b.mean() - 1e-6:
                best_m, heat_a, heat_b = snap, sa, sb
            if min(_covered_mean(sa), _covered_mean(sb)) >= 0.99:
                break  # pixel for pixel: no other shift can do better
    return heat_a, heat_b, best_m


def alignment_heatmaps(
    ga: np.ndarray, gb: np.ndarray, m_small: np.ndarray, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    inv = np.linalg.inv(m_small)
    wb, va = warp_image(gb, inv, ga.shape)
    wa, vb = warp_image(ga, m_small, gb.shape)
    fill = fill_of_free_turn(gb, m_small, ga.shape, margin=2)
    if fill is not None:  # B's filled corners are not part of the copy
        va, vb = va & ~fill[1], vb & ~fill[0]
    return (
        _agreement_grid(ga, wb, va, grid_shape(ga.shape, grid)),
        _agreement_grid(gb, wa, vb, grid_shape(gb.shape, grid)),
    )


def _windows(shape: tuple[int, int], frac: float) -> list[tuple[int, int, int, int]]:
    """Square sliding windows ``(x0, y0, x1, y1)`` of side ``frac`` x shorter side, half overlap."""
    h, w = shape
    side = max(MIN_IMAGE_SIDE, round(frac * min(h, w)))
    step = max(1, side // 2)

    def starts(n):
        s = list(range(0, max(1, n - side + 1), step))
        if s[-1] != max(0, n - side):
            s.append(max(0, n - side))
        return s

    return [(x, y, min(w, x + side), min(h, y + side)) for y in starts(h) for x in starts(w)]


def _windows_to_grid(
    values: np.ndarray,
    wins: list[tuple[int, int, int, int]],
    shape: tuple[int, int],
    gshape: tuple[int, int],
) -> np.ndarray:
    """Each grid cell takes the best score among windows holding its centre."""
    h, w = shape
    out = np.zeros(gshape, dtype=np.float32)
    cy = (np.arange(gshape[0]) + 0.5) * h / gshape[0]
    cx = (np.arange(gshape[1]) + 0.5) * w / gshape[1]
    for v, (x0, y0, x1, y1) in zip(values, wins, strict=True):
        rows = (cy >= y0) & (cy < y1)
        cols = (cx >= x0) & (cx < x1)
        block = out[np.ix_(rows, cols)]
        out[np.ix_(rows, cols)] = np.maximum(block, v)
    return out


def tile_heatmaps(
    model: BTAModel,
    image_a: np.ndarray,
    image_b: np.ndarray,
    grid: int = GRID,
    window: float = 0.5,
    batch_size: int = 32,
    should_stop: StopFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model heatmaps: each window of A scored against every window of B in its 8 orientations.

    A cell of ``heatmap_a`` holds the best score of the windows of A that cover it against any
    window of B (and vice versa), so it shows which parts of A have a counterpart in B even where
    keypoints fail. Scores are on the calibrated probability scale of the checkpoint
    (``calibration.score_probability``: 0.5 at its threshold; raw head scores for a checkpoint
    without a mapping). Windows are ``window`` x the shorter side, overlapping by half.
    """
    import torch

    from ..calibration import score_probability
    from ..model import embed_images

    a = as_float_rgb(image_a, "image_a")
    b = as_float_rgb(image_b, "image_b")
    wins_a, wins_b = _windows(a.shape[:2], window), _windows(b.shape[:2], window)
    crops_a = [a[y0:y1, x0:x1] for x0, y0, x1, y1 in wins_a]
    crops_b = [b[y0:y1, x0:x1] for x0, y0, x1, y1 in wins_b]
    za = embed_images(model, crops_a, batch_size=batch_size, should_stop=should_stop)
    zb = embed_images(model, crops_b, batch_size=batch_size, tta="d4", should_stop=should_stop)
    nb = zb.shape[0]
    zb = zb.reshape(nb * 8, -1)
    with torch.no_grad():
        s = model.score_matrix(za.to(model.device), zb.to(model.device)).float().cpu().numpy()
    s = score_probability(model.config.calibration, s.reshape(len(wins_a), nb, 8))
    best_a = s.max(axis=(1, 2))
    best_b = s.max(axis=(0, 2))
    return (
        _windows_to_grid(best_a, wins_a, a.shape[:2], grid_shape(a.shape, grid)),
        _windows_to_grid(best_b, wins_b, b.shape[:2], grid_shape(b.shape, grid)),
    )
