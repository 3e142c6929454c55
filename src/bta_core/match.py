"""``bta-core match A B``: locate where two images match and recover the transform from B to A.

A score says *that* two images share a source; this module says *where*. It answers "this region
of A is this region of B, rotated by 90 degrees and mirrored" (Bik et al.'s category II reuse).

How (details in docs/match.md):

1. Both images become grey, contrast-stretched and resized to about ``max_side`` pixels.
2. Keypoints: SIFT on A, on B and on B mirrored (SIFT is rotation- but not mirror-invariant),
   matched with a cross-check and ratio test, then RANSAC fits a similarity transform (rotation,
   uniform scale, translation; a mirror is added for the mirrored attempt).
3. When keypoints are too few or disagree, masked normalised cross-correlation (FFT) tries the 8
   rotations/flips of B at equal scale, which works on textures without corners.
4. A candidate is accepted only if the aligned pixels agree (normalised cross-correlation of the
   overlap), so two unrelated images get no box and a low confidence.
5. Outputs: the 3x3 matrix mapping B pixel coordinates (x, y) to A, its dihedral part, scale and
   translation; overlap masks and boxes in each image; per-tile similarity heatmaps (aligned pixel
   agreement, or the model's tile scores when no alignment is found and a model is given); the
   model's pair score; and a localisation confidence in [0, 1].
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .dihedral import D4_NAMES

if TYPE_CHECKING:  # torch is imported lazily: keypoint matching does not need it
    from .model import BTAModel

ProgressFn = Callable[[int, int, dict], None]


MAX_SIDE = 512
"""Keypoints are found on copies resized so that the longer side is about this many pixels."""
MIN_SIDE = 256
"""Smaller images are enlarged to this long side (at most 4x) so that SIFT finds keypoints."""
CORR_SIDE = 256
"""Long side of the common scale used by the correlation fallback."""
MIN_IMAGE_SIDE = 16
MIN_INLIERS = 8
"""RANSAC inliers needed before a keypoint transform is even checked."""
FEW_INLIERS = 4
FEW_NCC = 0.7
"""With only FEW_INLIERS..MIN_INLIERS inliers, the aligned pixels must agree this well."""
STRONG_INLIERS = 25
"""A candidate this well supported (and verified) stops the search early."""
MIN_NCC_KEYPOINTS = 0.3
"""Aligned pixels must correlate at least this much to accept a keypoint transform."""
MIN_NCC_CORRELATION = 0.7
"""Stricter bar for the correlation fallback, which has no keypoint support."""
MIN_MARGIN = 0.15
"""A correlation peak must beat the best peak of every other orientation by this much."""
MIN_COINCIDENCES = 4
"""Keypoints of A and B that must coincide under a correlation-only alignment."""
EXACT_NCC = 0.95
EXACT_MARGIN = 0.04
MIN_STRUCTURE = 0.05
"""The overlap must hold at least this share of each image's detail variance."""
MIN_OVERLAP = 0.12
"""Minimum overlap, as a fraction of the smaller image, for the correlation fallback."""
GRID = 16
"""Heatmap cells along the longer side of each image."""


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class MatchTransform:
    """Mapping from B pixel coordinates ``(x, y, 1)`` to A: ``p_a = matrix @ p_b``.

    The linear part is ``flip_x @ (scale * R(angle))`` read in image axes (x right, y down).
    ``rotation`` and ``flip`` name the dihedral part: B looks like the A region rotated
    counter-clockwise (as displayed) by ``rotation`` degrees after a left-right mirror when
    ``flip``; i.e. ``B ~ np.rot90(np.fliplr(region) if flip else region, rotation // 90)``.
    ``angle`` is the exact fitted angle (degrees), ``residual_angle`` its deviation from
    ``rotation`` (non-zero for free rotations). ``scale`` is the B -> A factor: 2.0 means B shows
    the region at half its size in A.
    """

    matrix: np.ndarray
    rotation: int
    flip: bool
    dihedral: str
    angle: float
    residual_angle: float
    scale: float
    translation: tuple[float, float]

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> MatchTransform:
        """Decompose a 3x3 similarity (possibly mirrored) matrix B -> A."""
        m = np.asarray(matrix, dtype=np.float64)
        lin = m[:2, :2]
        flip = bool(np.linalg.det(lin) < 0)
        rot = np.diag([-1.0, 1.0]) @ lin if flip else lin
        scale = float(math.sqrt(abs(np.linalg.det(rot))))
        angle = float(math.degrees(math.atan2(rot[1, 0], rot[0, 0])))
        k = int(round(angle / 90.0)) % 4
        residual = (angle - 90.0 * k + 180.0) % 360.0 - 180.0
        return cls(
            matrix=m,
            rotation=90 * k,
            flip=flip,
            dihedral=D4_NAMES[4 * int(flip) + k],
            angle=angle,
            residual_angle=float(residual),
            scale=scale,
            translation=(float(m[0, 2]), float(m[1, 2])),
        )

    @property
    def inverse(self) -> np.ndarray:
        """3x3 matrix mapping A pixel coordinates to B."""
        return np.linalg.inv(self.matrix)

    def to_dict(self) -> dict:
        return {
            "matrix": [[float(v) for v in row] for row in self.matrix],
            "rotation": self.rotation,
            "flip": self.flip,
            "dihedral": self.dihedral,
            "angle": round(self.angle, 3),
            "residual_angle": round(self.residual_angle, 3),
            "scale": round(self.scale, 5),
            "translation": [round(v, 2) for v in self.translation],
        }


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

    @property
    def found(self) -> bool:
        """True when a region was located and verified."""
        return self.transform is not None

    def outline_a(self) -> np.ndarray | None:
        """Corners of B mapped into A, ``(4, 2)`` as ``(x, y)`` (a rotated box), or None."""
        if self.transform is None:
            return None
        return _map_points(self.transform.matrix, _corners(self.shape_b))

    def outline_b(self) -> np.ndarray | None:
        """Corners of A mapped into B, ``(4, 2)`` as ``(x, y)``, or None."""
        if self.transform is None:
            return None
        return _map_points(self.transform.inverse, _corners(self.shape_a))

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
        }


def upsample_heatmap(
    heatmap: np.ndarray, shape: tuple[int, ...], smooth: bool = False
) -> np.ndarray:
    """A tile-grid heatmap at image size ``shape[:2]`` (nearest cells, or bilinear with ``smooth``)."""
    from skimage.transform import resize

    h = np.asarray(heatmap, dtype=np.float32)
    out = resize(h, tuple(shape[:2]), order=1 if smooth else 0, mode="edge", anti_aliasing=False)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Image preparation and geometry helpers


def _as_float_rgb(image: np.ndarray, name: str) -> np.ndarray:
    """Any 2-D grey or (H, W, C) array -> float32 (H, W, 3) in [0, 1]; clear errors otherwise."""
    from .imageio import scale_intensity

    arr = np.asarray(image)
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected a (H, W) or (H, W, 3|4) image, got shape {arr.shape}")
    if min(arr.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name}: image too small to match ({arr.shape[0]}x{arr.shape[1]} pixels)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name}: image contains NaN or infinite values")
    chans = arr.shape[-1] if arr.shape[-1] != 4 else 3
    if arr.dtype.kind == "f" and arr.min() >= 0.0 and arr.max() <= 1.0:
        rgb = arr[..., :chans].astype(np.float32)
    else:
        rgb = np.stack([scale_intensity(arr[..., c], arr.dtype) for c in range(chans)], axis=-1)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Luminance, contrast-stretched to the 0.5-99.5 percentiles (SIFT thresholds are absolute)."""
    g = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    lo, hi = np.percentile(g, (0.5, 99.5))
    if hi - lo < 1e-6:
        return np.zeros_like(g)
    return np.clip((g - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _bandpass(g: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Difference of Gaussians: keeps cell-scale detail, drops the smooth shading that makes
    unrelated images of the same kind correlate."""
    from scipy import ndimage as ndi

    g = g.astype(np.float32)
    return ndi.gaussian_filter(g, sigma) - ndi.gaussian_filter(g, 4 * sigma)


def _resize_to(g: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize by ``factor``; returns the image and the 3x3 matrix full -> small pixel coords."""
    from skimage.transform import resize

    h, w = g.shape
    nh, nw = (
        max(MIN_IMAGE_SIDE // 2, round(h * factor)),
        max(MIN_IMAGE_SIDE // 2, round(w * factor)),
    )
    if (nh, nw) == (h, w):
        return g, np.eye(3)
    small = resize(g, (nh, nw), order=1, anti_aliasing=factor < 1, preserve_range=True)
    sx, sy = nw / w, nh / h
    # pixel centres: x_small + 0.5 = (x + 0.5) * sx
    to_small = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return small.astype(np.float32), to_small


def _work_factor(shape: tuple[int, ...], max_side: int) -> float:
    long = max(shape[:2])
    if long > max_side:
        return max_side / long
    if long < MIN_SIDE:
        return min(4.0, MIN_SIDE / long)
    return 1.0


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """Outer pixel-edge corners of an image, ``(x, y)``, clockwise from top-left."""
    h, w = shape[:2]
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def _map_points(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    pts = np.c_[xy, np.ones(len(xy))] @ np.asarray(matrix).T
    return pts[:, :2] / pts[:, 2:3]


def _polygon_mask(shape: tuple[int, ...], poly_xy: np.ndarray) -> np.ndarray:
    """Pixels whose centre lies inside a convex polygon (vertices ``(x, y)``, either winding)."""
    h, w = shape[:2]
    ys = np.arange(h, dtype=np.float64)[:, None]
    xs = np.arange(w, dtype=np.float64)[None, :]
    poly = np.asarray(poly_xy, dtype=np.float64)
    signs = []
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        signs.append((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0))
    eps = 1e-9
    inside_pos = np.ones((h, w), dtype=bool)
    inside_neg = np.ones((h, w), dtype=bool)
    for c in signs:
        inside_pos &= c >= -eps
        inside_neg &= c <= eps
    return inside_pos | inside_neg


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _dihedral(g: np.ndarray, index: int) -> np.ndarray:
    """Orientation ``D4_NAMES[index]`` of a 2-D array (same as ``bta_core.model.d4_orientations``)."""
    src = np.fliplr(g) if index >= 4 else g
    return np.ascontiguousarray(np.rot90(src, index % 4))


def _dihedral_to_source(shape: tuple[int, int], index: int) -> np.ndarray:
    """3x3 matrix mapping pixel ``(x, y)`` of ``_dihedral(g, index)`` back to ``g``."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    ox, oy = _dihedral(xs, index), _dihedral(ys, index)
    oh, ow = ox.shape
    pts = [(0, 0), (ow - 1, 0), (0, oh - 1)]
    src = np.array([[ox[y, x], oy[y, x], 1.0] for x, y in pts])
    dst = np.array([[x, y, 1.0] for x, y in pts])
    sol = np.linalg.lstsq(dst, src, rcond=None)[0].T  # rows: x_src, y_src, 1
    sol[2] = [0, 0, 1]
    return np.round(sol, 6)


def _warp(
    image: np.ndarray, matrix_out_to_in: np.ndarray, out_shape: tuple[int, int], order: int = 1
):
    """Resample ``image`` into a frame of ``out_shape``; returns (warped, valid mask).

    ``matrix_out_to_in`` is an affine 3x3 matrix on ``(x, y)`` pixel coordinates. Valid pixels are
    those whose source lies inside ``image``'s pixel area (the same footprint as the masks); the
    half-pixel border ring takes the nearest edge value.
    """
    from scipy import ndimage as ndi

    m = np.asarray(matrix_out_to_in, dtype=np.float64)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])
    m_rc = swap @ m @ swap  # the same map on (row, col)
    out_shape = tuple(int(v) for v in out_shape[:2])
    if image.ndim == 2:
        out = ndi.affine_transform(image, m_rc, output_shape=out_shape, order=order, mode="nearest")
    else:
        out = np.stack(
            [
                ndi.affine_transform(
                    image[..., c], m_rc, output_shape=out_shape, order=order, mode="nearest"
                )
                for c in range(image.shape[-1])
            ],
            axis=-1,
        )
    valid = _polygon_mask(out_shape, _map_points(np.linalg.inv(m), _corners(image.shape)))
    out[~valid] = 0.0
    return out.astype(np.float32), valid


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 16:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


# ----------------------------------------------------------------------------------------------
# Keypoints


@dataclass
class _Candidate:
    matrix: np.ndarray  # B -> A in working (small) coordinates
    method: str
    inliers: int = 0
    matches: int = 0
    pts_a: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    pts_b: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    ncc: float = 0.0
    overlap_a: float = 0.0
    overlap_b: float = 0.0
    peak: float = 0.0
    structure: float = 0.0
    margin: float = 1.0
    coincidences: int = 0


_SIFT_CACHE: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
SIFT_CACHE_SIZE = 512
"""Keypoints of this many recent images are kept, so checking many pairs that share images
(``bta-core scan --verify``) detects each image's keypoints once."""


def _sift(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints ``(N, 2)`` as ``(x, y)`` and descriptors (cached by image content)."""
    key = hashlib.blake2b(np.ascontiguousarray(g).tobytes(), digest_size=16).digest()
    key += repr(g.shape).encode()
    hit = _SIFT_CACHE.get(key)
    if hit is not None:
        _SIFT_CACHE.move_to_end(key)
        return hit
    feats = _sift_uncached(g)
    for arr in feats:
        arr.setflags(write=False)  # shared between calls
    _SIFT_CACHE[key] = feats
    if len(_SIFT_CACHE) > SIFT_CACHE_SIZE:
        _SIFT_CACHE.popitem(last=False)
    return feats


def _sift_uncached(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.feature import SIFT

    det = SIFT(upsampling=1)
    try:
        det.detect_and_extract(g)
    except (RuntimeError, ValueError):  # too small / no extrema
        return np.zeros((0, 2)), np.zeros((0, 128), dtype=np.uint8)
    if det.keypoints is None or len(det.keypoints) == 0:
        return np.zeros((0, 2)), np.zeros((0, 128), dtype=np.uint8)
    return det.keypoints[:, ::-1].astype(np.float64), det.descriptors


def _ransac_similarity(
    src: np.ndarray, dst: np.ndarray, threshold: float, trials: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Robust similarity ``dst ~ a * src + b`` on points as complex numbers ``x + iy``.

    Two correspondences fix a similarity, so all ``trials`` hypotheses are solved and scored at
    once (vectorised); the best consensus set is refitted by least squares twice. Returns the 3x3
    matrix and the inlier mask, or None.
    """
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    n = len(zs)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, trials)
    j = rng.integers(0, n - 1, trials)
    j = np.where(j >= i, j + 1, j)  # two distinct points
    ds = zs[i] - zs[j]
    ok = np.abs(ds) > 1e-6
    a = np.where(ok, (zd[i] - zd[j]) / np.where(ok, ds, 1), 0)
    scale = np.abs(a)
    ok &= (scale >= 1 / 8) & (scale <= 8)
    if not ok.any():
        return None
    a, b = a[ok], (zd[i] - a * zs[i])[ok]
    err = np.abs(a[:, None] * zs[None, :] + b[:, None] - zd[None, :])
    counts = (err < threshold).sum(axis=1)
    best = int(np.argmax(counts))
    inl = err[best] < threshold
    for _ in range(2):
        if inl.sum() < 2:
            return None
        design = np.c_[zs[inl], np.ones(int(inl.sum()))]
        (a1, b1), *_ = np.linalg.lstsq(design, zd[inl], rcond=None)
        if not 1 / 8 <= abs(a1) <= 8:
            return None
        inl = np.abs(a1 * zs + b1 - zd) < threshold
    m = np.array([[a1.real, -a1.imag, b1.real], [a1.imag, a1.real, b1.imag], [0, 0, 1.0]])
    return m, inl


def _fit_keypoints(
    kp_a: np.ndarray, d_a: np.ndarray, kp_b: np.ndarray, d_b: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """RANSAC similarity B -> A; returns (matrix, inlier points A, inlier points B, n matches)."""
    from skimage.feature import match_descriptors

    if len(kp_a) < 3 or len(kp_b) < 3:
        return None
    pairs = match_descriptors(d_a, d_b, cross_check=True, max_ratio=0.85)
    if len(pairs) < 3:
        return None
    src, dst = kp_b[pairs[:, 1]], kp_a[pairs[:, 0]]
    fit = _ransac_similarity(src, dst, threshold=3.0, trials=2000, seed=seed)
    if fit is None or fit[1].sum() < 3:
        return None
    m, inl = fit
    return m, dst[inl], src[inl], len(pairs)


def _coincidences(
    kp_a: np.ndarray, kp_b: np.ndarray, matrix: np.ndarray, radius: float = 3.0
) -> int:
    """How many of B's keypoints, mapped into A, land within ``radius`` of one of A's.

    Independent of descriptors: a true alignment of textured content makes many keypoints
    coincide; a placement that only lines up one blob or plain background makes almost none.
    """
    if len(kp_a) == 0 or len(kp_b) == 0:
        return 0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(kp_a).query(_map_points(matrix, kp_b), distance_upper_bound=radius)
    return int(np.isfinite(dist).sum())


def _verify(ha: np.ndarray, hb: np.ndarray, cand: _Candidate) -> _Candidate:
    """Pixel agreement and overlap of a candidate, on band-passed working images.

    ``ncc`` is the correlation of the aligned overlap; ``structure`` how much of each image's
    detail (variance) the overlap holds, so a match on empty background cannot pass.
    """
    try:
        inv = np.linalg.inv(cand.matrix)
    except np.linalg.LinAlgError:
        cand.ncc = 0.0
        return cand
    warped, valid = _warp(hb, inv, ha.shape)
    n = int(valid.sum())
    scale2 = abs(np.linalg.det(cand.matrix[:2, :2]))
    cand.overlap_a = n / ha.size
    cand.overlap_b = min(1.0, n / max(1.0, hb.size * scale2))
    if n < 64:
        cand.ncc = 0.0
        return cand
    pa, pb = ha[valid], warped[valid]
    cand.ncc = _ncc(pa, pb)
    cand.structure = float(min(pa.var() / max(ha.var(), 1e-12), pb.var() / max(hb.var(), 1e-12)))
    return cand


def _keypoint_candidates(
    feats_a: tuple[np.ndarray, np.ndarray],
    feats_b: tuple[np.ndarray, np.ndarray],
    gb: np.ndarray,
    ha: np.ndarray,
    hb: np.ndarray,
    seed: int,
    should_stop,
) -> list[_Candidate]:
    """Try B as is and mirrored (SIFT handles rotations); best verified candidates first."""
    kp_a, d_a = feats_a
    out: list[_Candidate] = []
    for flip in (False, True):
        _check_stop(should_stop)
        kp_b, d_b = _sift(np.ascontiguousarray(np.fliplr(gb))) if flip else feats_b
        fit = _fit_keypoints(kp_a, d_a, kp_b, d_b, seed)
        if fit is None:
            continue
        m, pa, pb, n_matches = fit
        if flip:  # B pixel x -> mirrored pixel w - 1 - x, then the fitted map
            w = gb.shape[1]
            mirror = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])
            m = m @ mirror
            pb = pb.copy()
            pb[:, 0] = w - 1 - pb[:, 0]
        cand = _verify(ha, hb, _Candidate(m, "keypoints", len(pa), n_matches, pa, pb))
        out.append(cand)
        if cand.inliers >= STRONG_INLIERS and cand.ncc >= 0.5:
            break  # a clear answer: skip the mirrored attempt
    out.sort(
        key=lambda c: (c.inliers >= MIN_INLIERS and c.ncc >= MIN_NCC_KEYPOINTS, c.inliers),
        reverse=True,
    )
    return out


# ----------------------------------------------------------------------------------------------
# Correlation fallback (textures without keypoints)


def _masked_ncc_map(
    a: np.ndarray, b: np.ndarray, min_overlap: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """NCC of ``b`` shifted over ``a`` for every integer shift, computed only on the overlap.

    Returns the map (``-1`` where the overlap is below ``min_overlap`` pixels) and the offset:
    entry ``(i, j)`` places b's pixel ``(x, y)`` on a's pixel ``(x + j - off_x, y + i - off_y)``.
    """
    from scipy import fft

    ha, wa = a.shape
    hb, wb = b.shape
    s = (fft.next_fast_len(ha + hb - 1, real=True), fft.next_fast_len(wa + wb - 1, real=True))
    bf = b[::-1, ::-1]

    def f(x):
        return fft.rfft2(x, s)

    def inv(x):
        return fft.irfft2(x, s)[: ha + hb - 1, : wa + wb - 1]

    one_a, one_b = np.ones_like(a), np.ones_like(bf)
    fa, fa2, f1a = f(a), f(a * a), f(one_a)
    fb, fb2, f1b = f(bf), f(bf * bf), f(one_b)
    n = np.round(inv(f1a * f1b))
    sa, sb = inv(fa * f1b), inv(f1a * fb)
    saa, sbb, sab = inv(fa2 * f1b), inv(f1a * fb2), inv(fa * fb)
    ok = n >= max(min_overlap, 16)
    n = np.maximum(n, 1)
    va = saa - sa * sa / n
    vb = sbb - sb * sb / n
    # low-variance overlaps (flat background) cannot vouch for a match
    floor_a = 0.02 * float(a.var()) * n
    floor_b = 0.02 * float(b.var()) * n
    ok &= (va > floor_a) & (vb > floor_b)
    den = np.sqrt(np.maximum(va, 1e-12) * np.maximum(vb, 1e-12))
    ncc = np.where(ok, (sab - sa * sb / n) / den, -1.0)
    return ncc, (wb - 1, hb - 1)


def _subpixel(surface: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Parabolic offset of a peak along each axis (0 at borders or on flat tops)."""

    def off(m1: float, c: float, p1: float) -> float:
        den = m1 - 2 * c + p1
        return float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5)) if den < 0 else 0.0

    h, w = surface.shape
    di = off(surface[i - 1, j], surface[i, j], surface[i + 1, j]) if 0 < i < h - 1 else 0.0
    dj = off(surface[i, j - 1], surface[i, j], surface[i, j + 1]) if 0 < j < w - 1 else 0.0
    if min(surface[max(i - 1, 0), j], surface[min(i + 1, h - 1), j]) < -0.5:
        di = 0.0
    if min(surface[i, max(j - 1, 0)], surface[i, min(j + 1, w - 1)]) < -0.5:
        dj = 0.0
    return di, dj


def _refine_shift(
    ha: np.ndarray, hb: np.ndarray, cand: _Candidate, radius: float = 1.5
) -> _Candidate:
    """Polish a coarse placement by a small translation search at working resolution."""
    best = _verify(ha, hb, cand)
    for step in (radius, radius / 3):
        centre = best.matrix
        for dy in (-step, 0.0, step):
            for dx in (-step, 0.0, step):
                if dx == dy == 0.0:
                    continue
                shift = np.array([[1.0, 0, dx], [0, 1, dy], [0, 0, 1]])
                trial = _verify(ha, hb, replace(cand, matrix=shift @ centre))
                if trial.ncc > best.ncc:
                    best = trial
    return best


def _correlation_candidates(ga: np.ndarray, gb: np.ndarray, should_stop) -> list[_Candidate]:
    """Best equal-scale placement of B's 8 orientations over A, for full-size grey images.

    Both images are shrunk by one common factor (equal scale is the assumption here). Returns
    at most two candidates (matrices in full-size coordinates), best first; ``peak`` holds the
    correlation and ``info`` how far the runner-up orientation trails (a distinct peak).
    """
    factor = min(1.0, CORR_SIDE / max(ga.shape + gb.shape))
    sa, to_a = _resize_to(ga, factor)
    sb, to_b = _resize_to(gb, factor)
    sa, sb = _bandpass(sa), _bandpass(sb)
    min_overlap = MIN_OVERLAP * min(sa.size, sb.size)
    out = []
    for index in range(8):
        _check_stop(should_stop)
        ob = _dihedral(sb, index)
        ncc, (off_x, off_y) = _masked_ncc_map(sa, ob, min_overlap)
        i, j = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        peak = float(ncc[i, j])
        if peak <= 0:
            continue
        di, dj = _subpixel(ncc, i, j)
        shift = np.array([[1.0, 0, j + dj - off_x], [0, 1, i + di - off_y], [0, 0, 1]])
        m_small = shift @ np.linalg.inv(_dihedral_to_source(sb.shape, index))  # small B -> small A
        m = np.linalg.inv(to_a) @ m_small @ to_b
        out.append(_Candidate(m, "correlation", peak=peak))
    out.sort(key=lambda c: c.peak, reverse=True)
    for c in out:
        c.margin = c.peak - max((o.peak for o in out if o is not c), default=0.0)
    return out[:2]


# ----------------------------------------------------------------------------------------------
# Heatmaps


def _grid_shape(shape: tuple[int, ...], grid: int) -> tuple[int, int]:
    h, w = shape[:2]
    long = max(h, w)
    return max(1, round(grid * h / long)), max(1, round(grid * w / long))


def _cell_index(shape: tuple[int, int], gshape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    rows = (np.arange(h) * gshape[0]) // h
    cols = (np.arange(w) * gshape[1]) // w
    return rows[:, None] * gshape[1] + cols[None, :]


def _agreement_grid(
    ref: np.ndarray, moved: np.ndarray, valid: np.ndarray, gshape: tuple[int, int]
) -> np.ndarray:
    """Per-cell agreement of two aligned grey images: valid fraction x local correlation.

    Cells flat in both images count as agreeing when their brightness matches, so plain
    background inside a copied region is not shown as a mismatch.
    """
    cells = _cell_index(ref.shape, gshape).ravel()
    k = gshape[0] * gshape[1]
    v = valid.ravel().astype(np.float64)
    a = ref.ravel().astype(np.float64) * v
    b = moved.ravel().astype(np.float64) * v

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


def _alignment_heatmaps(
    ga: np.ndarray, gb: np.ndarray, m_small: np.ndarray, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    inv = np.linalg.inv(m_small)
    wb, va = _warp(gb, inv, ga.shape)
    wa, vb = _warp(ga, m_small, gb.shape)
    return (
        _agreement_grid(ga, wb, va, _grid_shape(ga.shape, grid)),
        _agreement_grid(gb, wa, vb, _grid_shape(gb.shape, grid)),
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
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model heatmaps: each window of A scored against every window of B in its 8 orientations.

    A cell of ``heatmap_a`` holds the best head score of the windows of A that cover it against
    any window of B (and vice versa), so it shows which parts of A have a counterpart in B even
    where keypoints fail. Windows are ``window`` x the shorter side, overlapping by half.
    """
    import torch

    from .model import embed_images

    a = _as_float_rgb(image_a, "image_a")
    b = _as_float_rgb(image_b, "image_b")
    wins_a, wins_b = _windows(a.shape[:2], window), _windows(b.shape[:2], window)
    crops_a = [a[y0:y1, x0:x1] for x0, y0, x1, y1 in wins_a]
    crops_b = [b[y0:y1, x0:x1] for x0, y0, x1, y1 in wins_b]
    za = embed_images(model, crops_a, batch_size=batch_size, should_stop=should_stop)
    zb = embed_images(model, crops_b, batch_size=batch_size, tta="d4", should_stop=should_stop)
    nb = zb.shape[0]
    zb = zb.reshape(nb * 8, -1)
    with torch.no_grad():
        s = model.score_matrix(za.to(model.device), zb.to(model.device)).float().cpu().numpy()
    s = s.reshape(len(wins_a), nb, 8)
    best_a = s.max(axis=(1, 2))
    best_b = s.max(axis=(0, 2))
    return (
        _windows_to_grid(best_a, wins_a, a.shape[:2], _grid_shape(a.shape, grid)),
        _windows_to_grid(best_b, wins_b, b.shape[:2], _grid_shape(b.shape, grid)),
    )


# ----------------------------------------------------------------------------------------------
# Main entry point


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise InterruptedError("matching cancelled")


def _confidence(cand: _Candidate, accepted: bool) -> float:
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


def _accept(cand: _Candidate) -> bool:
    """Is a candidate a verified match? (thresholds tuned on real BCCD/DSB pairs, docs/match.md)"""
    if cand.method == "keypoints":
        if cand.overlap_a <= 0.005:
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
    supported = cand.coincidences >= MIN_COINCIDENCES or exact
    return (
        corr >= MIN_NCC_CORRELATION
        and distinct
        and supported
        and cand.structure >= MIN_STRUCTURE
        and min(cand.overlap_a, cand.overlap_b) >= 0.5 * MIN_OVERLAP
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
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MatchResult:
    """Locate the region B shares with A and the transform mapping B's pixels onto A's.

    Args:
        image_a, image_b: arrays ``(H, W)`` or ``(H, W, 3|4)``, any numeric dtype (float in
            [0, 1] as from ``imageio.load_image`` is used as is; other ranges are rescaled).
        model: optional BTA model; adds the pair ``score`` and model tile heatmaps.
        max_side: long side (pixels) of the working copies used for keypoints.
        grid: heatmap cells along each image's longer side.
        use_correlation: try the 8-orientation correlation search when keypoints fail.
        model_tiles: with a model, compute its tile heatmaps (the slow part on a CPU: about
            150 crops embedded). None: only when no region was found, where they are the
            heatmap shown; True: always; False: never.
        seed: RANSAC seed (results are deterministic for a given seed).
        on_progress: ``on_progress(step, total, info)`` after each stage.
        should_stop: polled between stages; returning True raises ``InterruptedError``.
    """
    t0 = time.perf_counter()
    a = _as_float_rgb(image_a, "image_a")
    b = _as_float_rgb(image_b, "image_b")
    total = 4 if model is not None else 3

    def progress(step: int, stage: str) -> None:
        if on_progress is not None:
            on_progress(step, total, {"stage": stage})

    ga_full, gb_full = _grey(a), _grey(b)
    ga, to_a = _resize_to(ga_full, _work_factor(ga_full.shape, max_side))
    gb, to_b = _resize_to(gb_full, _work_factor(gb_full.shape, max_side))
    _check_stop(should_stop)

    ha, hb = _bandpass(ga), _bandpass(gb)
    feats_a, feats_b = _sift(ga), _sift(gb)
    cands = _keypoint_candidates(feats_a, feats_b, gb, ha, hb, seed, should_stop)
    best = next((c for c in cands if _accept(c)), None)
    n_kp_inliers = max((c.inliers for c in cands), default=0)
    progress(1, "keypoints")

    tried_corr = False
    if best is None and use_correlation:
        tried_corr = True
        for c in _correlation_candidates(ga_full, gb_full, should_stop):
            c.matrix = to_a @ c.matrix @ np.linalg.inv(to_b)  # full-size -> working coords
            c = _verify(ha, hb, c)
            if c.ncc >= 0.6 * MIN_NCC_CORRELATION:
                c = _refine_shift(ha, hb, c)
            c.coincidences = _coincidences(feats_a[0], feats_b[0], c.matrix)
            if _accept(c) and (best is None or c.ncc > best.ncc):
                best = c
    progress(2, "correlation")

    shape_a, shape_b = a.shape[:2], b.shape[:2]
    info: dict[str, Any] = {
        "work_shape_a": list(ga.shape),
        "work_shape_b": list(gb.shape),
        "keypoint_inliers": int(n_kp_inliers),
        "tried_correlation": tried_corr,
        "keypoints_a": len(feats_a[0]),
        "keypoints_b": len(feats_b[0]),
    }
    if best is not None:
        m_full = np.linalg.inv(to_a) @ best.matrix @ to_b
        transform = MatchTransform.from_matrix(m_full)
        mask_a = _polygon_mask(shape_a, _map_points(m_full, _corners(shape_b)))
        mask_b = _polygon_mask(shape_b, _map_points(np.linalg.inv(m_full), _corners(shape_a)))
        heat_a, heat_b = _alignment_heatmaps(ga, gb, best.matrix, grid)
        heat_src = "alignment"
        pts_a = (
            _map_points(np.linalg.inv(to_a), best.pts_a) if len(best.pts_a) else np.zeros((0, 2))
        )
        pts_b = (
            _map_points(np.linalg.inv(to_b), best.pts_b) if len(best.pts_b) else np.zeros((0, 2))
        )
        conf = _confidence(best, True)
    else:
        transform = None
        mask_a = np.zeros(shape_a, dtype=bool)
        mask_b = np.zeros(shape_b, dtype=bool)
        heat_a = np.zeros(_grid_shape(shape_a, grid), dtype=np.float32)
        heat_b = np.zeros(_grid_shape(shape_b, grid), dtype=np.float32)
        heat_src = "none"
        pts_a = pts_b = np.zeros((0, 2))
        conf = max((_confidence(c, False) for c in cands), default=0.0)
    progress(3, "alignment")

    score = model_a = model_b = None
    if model is not None:
        from .score import score_arrays

        _check_stop(should_stop)
        score = score_arrays(model, a, b, tta="d4")
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
        box_a=_box(mask_a),
        box_b=_box(mask_b),
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
    )


def match_files(
    path_a: str | os.PathLike, path_b: str | os.PathLike, model: BTAModel | None = None, **kwargs
) -> MatchResult:
    """``match_images`` on two files read with ``imageio.load_image`` (errors name the file)."""
    from .imageio import load_image

    return match_images(load_image(path_a), load_image(path_b), model=model, **kwargs)


# ----------------------------------------------------------------------------------------------
# Rendering


def warp_b_to_a(image_b: np.ndarray, result: MatchResult, shape_a: tuple[int, ...]) -> np.ndarray:
    """B resampled into A's pixel frame ``shape_a[:2]`` (float RGB, zeros outside ``mask_a``).

    Raises ``ValueError`` when the result holds no transform.
    """
    if result.transform is None:
        raise ValueError("no match was found, so B cannot be placed in A's frame")
    b = _as_float_rgb(image_b, "image_b")
    out, valid = _warp(b, result.transform.inverse, tuple(shape_a[:2]))
    out[~valid] = 0.0
    return np.clip(out, 0.0, 1.0)


def summary(result: MatchResult) -> str:
    """One line describing a result, e.g. for titles and terminal output."""
    score = "" if result.score is None else f", model score {result.score:.3f}"
    if result.transform is None:
        return f"no matching region found (confidence {result.confidence:.2f}{score})"
    t = result.transform
    what = t.dihedral if t.dihedral != "identity" else "no rotation/flip"
    extra = f" (+{t.residual_angle:.1f} deg)" if abs(t.residual_angle) >= 1 else ""
    return (
        f"match: {what}{extra}, scale {t.scale:.2f}, shift ({t.translation[0]:.0f}, "
        f"{t.translation[1]:.0f}) px, {result.inliers} inliers [{result.method}], "
        f"confidence {result.confidence:.2f}{score}"
    )


def render_match_png(
    image_a: np.ndarray,
    image_b: np.ndarray,
    result: MatchResult,
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write a PNG: A with the overlap outlined, B with its matched region, B warped onto A
    (A in magenta, B in green: grey where they agree), and the heatmap over A."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from .checkpoint import atomic_write

    a = _as_float_rgb(image_a, "image_a")
    b = _as_float_rgb(image_b, "image_b")
    fig = Figure(figsize=(16, 4.6), dpi=dpi)
    axes = fig.subplots(1, 4)
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(a)
    axes[0].set_title("A: overlap with B")
    axes[1].imshow(b)
    axes[1].set_title("B: region found in A")
    if result.transform is not None:
        for ax, poly in ((axes[0], result.outline_a()), (axes[1], result.outline_b())):
            closed = np.vstack([poly, poly[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color="#00e5ff", lw=2)
            ax.set_xlim(-0.5, (a if ax is axes[0] else b).shape[1] - 0.5)
            ax.set_ylim((a if ax is axes[0] else b).shape[0] - 0.5, -0.5)
        if len(result.points_a):
            axes[0].scatter(*result.points_a.T, s=8, c="#ffd400", edgecolors="k", linewidths=0.3)
            axes[1].scatter(*result.points_b.T, s=8, c="#ffd400", edgecolors="k", linewidths=0.3)
        ga = _grey(a)
        gb, valid = _warp(_grey(b), result.transform.inverse, a.shape[:2])
        gb[~valid] = 0
        overlay = np.stack([ga, gb, ga], axis=-1)
        axes[2].imshow(overlay)
        poly = result.outline_a()
        closed = np.vstack([poly, poly[:1]])
        axes[2].plot(closed[:, 0], closed[:, 1], color="#00e5ff", lw=1.5)
        axes[2].set_xlim(-0.5, a.shape[1] - 0.5)
        axes[2].set_ylim(a.shape[0] - 0.5, -0.5)
        axes[2].set_title("B warped onto A (A magenta, B green)")
    else:
        axes[2].imshow(np.zeros_like(a))
        axes[2].text(
            0.5, 0.5, "no region found", color="w", ha="center", transform=axes[2].transAxes
        )
        axes[2].set_title("B warped onto A")
    axes[3].imshow(_grey(a), cmap="gray")
    heat = upsample_heatmap(result.heatmap_a, a.shape, smooth=True)
    im = axes[3].imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    axes[3].set_title(f"A: tile similarity ({result.heatmap_source})")
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.02)
    fig.suptitle(title or summary(result), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


# ----------------------------------------------------------------------------------------------
# CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("image_a", help="first image file (the reference frame)")
    parser.add_argument("image_b", help="second image file (mapped onto the first)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="model checkpoint for the pair score and tile heatmaps (default: the bundled model "
        "if installed, else keypoints only)",
    )
    parser.add_argument("--no-model", action="store_true", help="skip the model (keypoints only)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="working size for keypoints")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=None, metavar="DIR", help="write a PNG (and JSON) here")
    parser.add_argument("--quiet", action="store_true", help="no notes on stderr")
    return parser


def _load_model(args: argparse.Namespace):
    if args.no_model:
        return None
    from .checkpoint import DEFAULT_MODEL_PATH, load_checkpoint
    from .device import get_device

    if args.checkpoint is None and not DEFAULT_MODEL_PATH.exists():
        if not args.quiet:
            print("note: no bundled model installed; matching with keypoints only", file=sys.stderr)
        return None
    return load_checkpoint(args.checkpoint, device=get_device(args.device))


def main(args: argparse.Namespace) -> int:
    from .imageio import load_image

    a = load_image(args.image_a)
    b = load_image(args.image_b)
    model = _load_model(args)
    result = match_images(a, b, model=model, max_side=args.max_side)
    data = {"image_a": str(args.image_a), "image_b": str(args.image_b), **result.to_dict()}
    if model is not None:
        data["checkpoint"] = getattr(model, "checkpoint_path", None)
        data["threshold"] = float(model.config.threshold)
    if args.out:
        from .checkpoint import atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"match_{Path(args.image_a).stem}__{Path(args.image_b).stem}"
        png = render_match_png(a, b, result, out / f"{stem}.png")
        data["png"] = str(png)
        data["json"] = str(out / f"{stem}.json")
        atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=1))
    if args.json:
        print(json.dumps(data))
    else:
        print(summary(result))
        if result.box_a is not None:
            print(f"box_a {result.box_a}  box_b {result.box_b}")
        if args.out:
            print(f"wrote {data['png']}")
    return 0
