"""``match_images``: locate the region B shares with A and the transform from B to A."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runtime import ProgressFn, StopFn, check_cancel
from .correlation import correlation_candidates, refine_shift
from .edits import LocalEdits, local_edits
from .heatmaps import full_size_heatmaps, grid_shape, tile_heatmaps
from .keypoints import (
    Candidate,
    chance_coincidences,
    check_alignment,
    coarse_agreement,
    coincidences,
    keypoint_candidates,
    lowpass,
    sift_features,
)
from .panel_search import holding_candidate, panel_corners, panel_overlap, search_panels
from .panels import find_panels
from .params import (
    CHANCE_P,
    EXACT_MARGIN,
    EXACT_MIN_OVERLAP,
    EXACT_NCC,
    FEW_INLIERS,
    FEW_NCC,
    GRID,
    MAX_SIDE,
    MIN_COINCIDENCES,
    MIN_INLIERS,
    MIN_MARGIN,
    MIN_NCC_COARSE,
    MIN_NCC_CORRELATION,
    MIN_NCC_KEYPOINTS,
    MIN_OVERLAP,
    MIN_STRUCTURE,
    STRONG_INLIERS,
)
from .prepare import (
    as_float_rgb,
    bandpass,
    common_scale,
    fill_of_free_turn,
    resize_by,
    to_grey,
    work_factor,
)
from .transform import MatchTransform, image_corners, map_points, mask_box, polygon_mask

if TYPE_CHECKING:
    from ..model import BTAModel


@dataclass
class MatchResult:
    """Where A and B match. Boxes are ``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive.

    ``transform`` is None and boxes are None when no region was verified. Masks are full-size
    bool arrays (all False without a match). Heatmaps are tile grids (``GRID`` cells along the
    longer side) in [0, 1]; ``upsample_heatmap`` brings one to image size, and cell ``(i, j)``
    covers ``shape[0] / grid.shape[0]`` rows from ``i * that``.
    """

    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    transform: MatchTransform | None
    method: str
    """"keypoints", "correlation" or "none"."""
    inliers: int
    matches: int
    box_a: tuple[int, int, int, int] | None
    box_b: tuple[int, int, int, int] | None
    mask_a: np.ndarray
    mask_b: np.ndarray
    heatmap_a: np.ndarray
    heatmap_b: np.ndarray
    heatmap_source: str
    """"alignment" (aligned pixel agreement), "model" (tile scores) or "none"."""
    ncc: float
    """Normalised cross-correlation of the aligned overlap (0 without a match)."""
    overlap_a: float
    """Fraction of A's area covered by the match."""
    overlap_b: float
    """Fraction of B's area covered by the match."""
    confidence: float
    score: float | None = None
    """Model pair score P(same source), with a model; else None."""
    model_heatmap_a: np.ndarray | None = None
    model_heatmap_b: np.ndarray | None = None
    points_a: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Inlier keypoints in A, ``(N, 2)`` as ``(x, y)`` pixels."""
    points_b: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    local_edits: LocalEdits | None = None
    """Where the aligned copy differs locally (pasted or erased parts), or None without a
    verified overlap (``edits.local_edits``)."""

    @property
    def found(self) -> bool:
        """True when a region was located and verified."""
        return self.transform is not None

    def _panel_corners(self) -> tuple[str | None, np.ndarray | None]:
        """The matched panel's image ("a"/"b") and corners, when a panel matched on its own."""
        panel = (self.info or {}).get("panel")
        if not panel:
            return None, None
        return panel["image"], panel_corners(panel["box"])

    def outline_a(self) -> np.ndarray | None:
        """Corners of B (or of its matched panel) mapped into A, ``(4, 2)`` as ``(x, y)`` (a
        rotated box); A's own panel when that is what matched; None without a match."""
        if self.transform is None:
            return None
        side, corners = self._panel_corners()
        if side == "a":
            return corners
        pts = image_corners(self.shape_b) if corners is None else corners
        return map_points(self.transform.matrix, pts)

    def outline_b(self) -> np.ndarray | None:
        """Corners of A (or of its matched panel) mapped into B, ``(4, 2)`` as ``(x, y)``."""
        if self.transform is None:
            return None
        side, corners = self._panel_corners()
        if side == "b":
            return corners
        pts = image_corners(self.shape_a) if corners is None else corners
        return map_points(self.transform.inverse, pts)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (masks left out: they follow from the transform and shapes)."""

        def grid(h: np.ndarray | None) -> list | None:
            return None if h is None else np.round(h, 3).tolist()

        return {
            "found": self.found,
            "method": self.method,
            "shape_a": list(self.shape_a),
            "shape_b": list(self.shape_b),
            "transform": None if self.transform is None else self.transform.to_dict(),
            "inliers": int(self.inliers),
            "matches": int(self.matches),
            "box_a": None if self.box_a is None else list(self.box_a),
            "box_b": None if self.box_b is None else list(self.box_b),
            "overlap_a": round(float(self.overlap_a), 4),
            "overlap_b": round(float(self.overlap_b), 4),
            "ncc": round(float(self.ncc), 4),
            "confidence": round(float(self.confidence), 4),
            "score": None if self.score is None else float(self.score),
            "heatmap_source": self.heatmap_source,
            "heatmap_a": grid(self.heatmap_a),
            "heatmap_b": grid(self.heatmap_b),
            "model_heatmap_a": grid(self.model_heatmap_a),
            "model_heatmap_b": grid(self.model_heatmap_b),
            "points_a": np.round(self.points_a, 1).tolist(),
            "points_b": np.round(self.points_b, 1).tolist(),
            "seconds": round(float(self.seconds), 3),
            "info": self.info,
            "local_edits": None if self.local_edits is None else self.local_edits.to_dict(),
        }


def _confidence(cand: Candidate, accepted: bool) -> float:
    """Localisation confidence in [0, 1]: >= 0.5 exactly when a region was accepted.

    Accepted keypoint matches climb with inlier count and pixel agreement; correlation-only
    matches stay below 0.9 (no independent keypoint support). Rejected candidates keep a small
    value that shows how close they came.
    """
    if not accepted:
        part = min(1.0, cand.inliers / MIN_INLIERS) * float(
            np.clip(cand.ncc / MIN_NCC_KEYPOINTS, 0, 1)
        )
        return 0.4 * part
    if cand.method == "keypoints":
        support = 1.0 - math.exp(-(cand.inliers - FEW_INLIERS + 1) / 12.0)
        pix = float(np.clip((cand.ncc - MIN_NCC_KEYPOINTS) / 0.4, 0.0, 1.0))
        return float(0.5 + 0.5 * support * (0.5 + 0.5 * pix))
    pix = float(np.clip((max(cand.ncc, cand.peak) - MIN_NCC_CORRELATION) / 0.25, 0.0, 1.0))
    size = float(np.clip(min(cand.overlap_a, cand.overlap_b) / 0.25, 0.0, 1.0))
    return float(0.5 + 0.4 * pix * (0.5 + 0.5 * size))


def _chance_probability(count: int, expected: float) -> float:
    """P(at least ``count`` coincidences) when ``expected`` arise by chance (Poisson tail)."""
    from scipy.stats import poisson

    return float(poisson.sf(count - 1, max(expected, 1e-9)))


def _accept(cand: Candidate) -> bool:
    """Is a candidate a verified match? (thresholds tuned on real BCCD/DSB pairs, docs/match.md)"""
    if cand.method == "keypoints":
        if cand.overlap_a <= 0.005 or cand.ncc_coarse < MIN_NCC_COARSE:
            return False
        # a sliver of both images (a panel letter that looks the same mirrored) is no copy,
        # unless many keypoints say so; a crop covers most of itself
        sliver = max(cand.overlap_a, cand.overlap_b) < MIN_OVERLAP
        if sliver and cand.inliers < STRONG_INLIERS:
            return False
        strong = cand.inliers >= MIN_INLIERS and cand.ncc >= MIN_NCC_KEYPOINTS
        # few keypoints (small or sparse images) but pixels that agree closely on real detail
        few = (
            cand.inliers >= FEW_INLIERS and cand.ncc >= FEW_NCC and cand.structure >= MIN_STRUCTURE
        )
        return strong or few
    corr = max(cand.ncc, cand.peak)
    exact = corr >= EXACT_NCC
    # a distinct peak (sparse images can fit several orientations; allow that for exact copies)
    distinct = cand.margin >= MIN_MARGIN or (exact and cand.margin >= EXACT_MARGIN)
    # backed by keypoints that coincide after alignment (one lined-up blob is not enough)
    large = min(cand.overlap_a, cand.overlap_b) >= EXACT_MIN_OVERLAP
    coinciding = cand.coincidences >= MIN_COINCIDENCES
    supported = (exact and (large or coinciding)) or (
        coinciding and _chance_probability(cand.coincidences, cand.chance) <= CHANCE_P
    )
    return (
        corr >= MIN_NCC_CORRELATION
        and cand.ncc_coarse >= MIN_NCC_COARSE
        and distinct
        and supported
        and cand.structure >= MIN_STRUCTURE
        and min(cand.overlap_a, cand.overlap_b) >= 0.5 * MIN_OVERLAP
    )


@dataclass
class _Search:
    """One search of B's placement over A: the accepted candidate (None: none) and its frame."""

    best: Candidate | None
    cands: list[Candidate]
    to_a: np.ndarray
    """Full-size -> working pixel coordinates of A (and of B below)."""
    to_b: np.ndarray
    work_a: tuple[int, ...]
    work_b: tuple[int, ...]
    kp_inliers: int
    tried_correlation: bool
    n_keypoints: tuple[int, int]
    bandpassed: tuple[np.ndarray, np.ndarray]
    lowpassed: tuple[np.ndarray, np.ndarray]


def _search(
    ga_full: np.ndarray,
    gb_full: np.ndarray,
    max_side: int,
    seed: int,
    use_correlation: bool,
    should_stop: StopFn | None,
    after_keypoints=None,
) -> _Search:
    """Keypoint candidates of B over A, then (when none is accepted) the correlation search."""
    ga, to_a = resize_by(ga_full, work_factor(ga_full.shape, max_side))
    gb, to_b = resize_by(gb_full, work_factor(gb_full.shape, max_side))
    check_cancel(should_stop, "matching")

    ha, hb = bandpass(ga), bandpass(gb)
    feats_a, feats_b = sift_features(ga), sift_features(gb)
    lows = (lowpass(ga), lowpass(gb))
    cands = keypoint_candidates(feats_a, feats_b, gb, ha, hb, seed, should_stop, lows)
    best = next((c for c in cands if _accept(c)), None)
    n_kp_inliers = max((c.inliers for c in cands), default=0)
    if after_keypoints is not None:
        after_keypoints()

    tried_corr = False
    if best is None and use_correlation:
        tried_corr = True
        for c in correlation_candidates(ga_full, gb_full, should_stop):
            if c.margin < min(MIN_MARGIN, EXACT_MARGIN):
                continue  # never distinct (see _accept): spare its checks at working size
            c.matrix = to_a @ c.matrix @ np.linalg.inv(to_b)  # full-size -> working coords
            c = check_alignment(ha, hb, c)
            if c.ncc >= 0.6 * MIN_NCC_CORRELATION:
                c = refine_shift(ha, hb, c)
            coarse_agreement(*lows, c)
            c.coincidences = coincidences(feats_a[0], feats_b[0], c.matrix)
            c.chance = chance_coincidences(feats_a[0], feats_b[0], c.matrix, ga.shape, gb.shape)
            if _accept(c) and (best is None or c.ncc > best.ncc):
                best = c
    return _Search(
        best,
        cands,
        to_a,
        to_b,
        ga.shape,
        gb.shape,
        n_kp_inliers,
        tried_corr,
        (len(feats_a[0]), len(feats_b[0])),
        (ha, hb),
        lows,
    )


def match_images(
    image_a: np.ndarray,
    image_b: np.ndarray,
    model: BTAModel | None = None,
    *,
    max_side: int = MAX_SIDE,
    grid: int = GRID,
    use_correlation: bool = True,
    model_tiles: bool | None = None,
    seed: int = 0,
    tta: str | None = None,
    heatmaps: bool = True,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> MatchResult:
    """Locate the region B shares with A and the transform mapping B's pixels onto A's.

    Args:
        image_a, image_b: arrays ``(H, W)`` or ``(H, W, 3|4)``, any numeric dtype (float in
            [0, 1] as from ``imageio.load_image`` is used as is; other ranges are rescaled).
        model: optional BTA model; adds the pair ``score`` and model tile heatmaps.
        max_side: long side (pixels) of the working copies used for keypoints.
        grid: heatmap cells along each image's longer side.
        use_correlation: try the 8-orientation correlation search when keypoints fail.
        heatmaps: compute the alignment heatmaps (False: zeros, ``heatmap_source="none"``; a
            scan's verification only needs the verdict and the local edits).
        model_tiles: with a model, compute its tile heatmaps (the slow part on a CPU: about
            150 crops embedded). None: only when no region was found, where they are the
            heatmap shown; True: always; False: never.
        seed: RANSAC seed (results are deterministic for a given seed).
        tta: the model score's rule, as ``scoring.score_arrays`` (``"d4"``: best of the 8
            rotations/flips); the default gives the number ``bta-core score`` prints.
        on_progress: ``on_progress(step, total, info)`` after each stage.
        should_stop: polled between stages; returning True raises ``InterruptedError``.
    """
    t0 = time.perf_counter()
    a = as_float_rgb(image_a, "image_a")
    b = as_float_rgb(image_b, "image_b")
    total = 4 if model is not None else 3

    def progress(step: int, stage: str) -> None:
        if on_progress is not None:
            on_progress(step, total, {"stage": stage})

    levels_a, levels_b = to_grey(a, clip=False), to_grey(b, clip=False)  # for local edits
    ga_full, gb_full = np.clip(levels_a, 0, 1), np.clip(levels_b, 0, 1)  # = to_grey(a), (b)
    found = _search(
        ga_full,
        gb_full,
        max_side,
        seed,
        use_correlation,
        should_stop,
        lambda: progress(1, "keypoints"),
    )
    panels = (find_panels(a), find_panels(b))  # once: both checks below need them
    panel = None
    if found.best is not None:
        found.best, shared = holding_candidate(found, panels, (a, b), _accept)
        if shared is not None:  # figures sharing one panel: the match is that panel's
            panel = (found.best, shared)
    if found.best is None:  # a panel of a composite figure may match on its own
        panel = search_panels(
            (a, b),
            (ga_full, gb_full),
            panels,
            found,
            lambda ga, gb: _search(ga, gb, max_side, seed, use_correlation, should_stop),
            _accept,
        )
    progress(2, "correlation")
    best, cands, to_a, to_b = found.best, found.cands, found.to_a, found.to_b
    if panel is not None:
        best = panel[0]

    shape_a, shape_b = a.shape[:2], b.shape[:2]
    info: dict[str, Any] = {
        "work_shape_a": list(found.work_a),
        "work_shape_b": list(found.work_b),
        "keypoint_inliers": int(found.kp_inliers),
        "tried_correlation": found.tried_correlation,
        "keypoints_a": found.n_keypoints[0],
        "keypoints_b": found.n_keypoints[1],
    }
    if panel is not None:
        info["panel"] = panel[1]
    if best is not None:
        m_full = np.linalg.inv(to_a) @ best.matrix @ to_b
        if heatmaps:
            scaled = common_scale(ga_full, gb_full)
            heat_a, heat_b, m_full = full_size_heatmaps(scaled, m_full, gb_full.shape, grid)
        else:
            heat_a = np.zeros(grid_shape(shape_a, grid), dtype=np.float32)
            heat_b = np.zeros(grid_shape(shape_b, grid), dtype=np.float32)
        transform = MatchTransform.from_matrix(m_full)
        if panel is None:
            edits = local_edits(common_scale(levels_a, levels_b), m_full, grid)
            mask_a = polygon_mask(shape_a, map_points(m_full, image_corners(shape_b)))
            mask_b = polygon_mask(
                shape_b, map_points(np.linalg.inv(m_full), image_corners(shape_a))
            )
        else:  # the match is the panel's: the figure's gutters and other panels are not in it
            edits, mask_a, mask_b = panel_overlap(levels_a, levels_b, m_full, panel[1], grid)
        fill = fill_of_free_turn(gb_full, m_full, shape_a)
        if fill is not None:  # the shared region holds B's content, not its filled corners
            mask_a, mask_b = mask_a & ~fill[1], mask_b & ~fill[0]
        heat_src = "alignment" if heatmaps else "none"
        pts_a = map_points(np.linalg.inv(to_a), best.pts_a) if len(best.pts_a) else np.zeros((0, 2))
        pts_b = map_points(np.linalg.inv(to_b), best.pts_b) if len(best.pts_b) else np.zeros((0, 2))
        conf = _confidence(best, True)
    else:
        transform = edits = None
        mask_a = np.zeros(shape_a, dtype=bool)
        mask_b = np.zeros(shape_b, dtype=bool)
        heat_a = np.zeros(grid_shape(shape_a, grid), dtype=np.float32)
        heat_b = np.zeros(grid_shape(shape_b, grid), dtype=np.float32)
        heat_src = "none"
        pts_a = pts_b = np.zeros((0, 2))
        conf = max((_confidence(c, False) for c in cands), default=0.0)
    progress(3, "alignment")

    score = model_a = model_b = None
    if model is not None:
        from ..scoring import score_arrays

        check_cancel(should_stop, "matching")
        score = score_arrays(model, a, b, tta=tta)
        if model_tiles or (model_tiles is None and best is None):
            model_a, model_b = tile_heatmaps(model, a, b, grid=grid, should_stop=should_stop)
        if best is None and model_a is not None:
            heat_a, heat_b, heat_src = model_a, model_b, "model"
        progress(4, "model")

    return MatchResult(
        shape_a=tuple(shape_a),
        shape_b=tuple(shape_b),
        transform=transform,
        method=best.method if best is not None else "none",
        inliers=0
        if best is None
        else (best.inliers if best.method == "keypoints" else best.coincidences),
        matches=best.matches if best is not None else max((c.matches for c in cands), default=0),
        box_a=mask_box(mask_a),
        box_b=mask_box(mask_b),
        mask_a=mask_a,
        mask_b=mask_b,
        heatmap_a=heat_a,
        heatmap_b=heat_b,
        heatmap_source=heat_src,
        ncc=best.ncc if best is not None else 0.0,
        overlap_a=float(mask_a.mean()),
        overlap_b=float(mask_b.mean()),
        confidence=conf,
        score=score,
        model_heatmap_a=model_a,
        model_heatmap_b=model_b,
        points_a=pts_a,
        points_b=pts_b,
        seconds=time.perf_counter() - t0,
        info=info,
        local_edits=edits,
    )


def match_files(
    path_a: str | os.PathLike, path_b: str | os.PathLike, model: BTAModel | None = None, **kwargs
) -> MatchResult:
    """``match_images`` on two files read with ``imageio.load_image`` (errors name the file)."""
    from ..imageio import load_image

    return match_images(load_image(path_a), load_image(path_b), model=model, **kwargs)
