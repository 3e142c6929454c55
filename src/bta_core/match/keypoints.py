"""Keypoint candidates: SIFT on A, on B and on B mirrored, RANSAC similarity (or stretch with
the OpenCV backend), pixel check."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..runtime import check_cancel
from .params import MIN_INLIERS, MIN_NCC_COARSE, MIN_NCC_KEYPOINTS, STRONG_INLIERS
from .prepare import fill_of_free_turn, pixel_ncc
from .transform import image_corners, map_points, polygon_mask, warp_image


@dataclass
class Candidate:
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
    chance: float = 0.0
    """Coincidences expected by chance for this placement (see :func:`chance_coincidences`)."""
    ncc_coarse: float = 1.0
    """Correlation of the aligned overlap on low-passed images (:func:`coarse_agreement`)."""


_SIFT_CACHE: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
SIFT_CACHE_SIZE = 512
"""Keypoints of this many recent images are kept, so checking many pairs that share images
(``bta-core scan --verify``) detects each image's keypoints once."""

BACKENDS = ("opencv", "skimage")
"""Keypoint implementations: OpenCV SIFT + ``estimateAffinePartial2D`` RANSAC (default; the
same located-crop accuracy, 2-4x faster, benchmarks/match_time.py) or scikit-image SIFT + the
vectorised RANSAC below."""
_backend = "opencv"


def set_backend(name: str) -> None:
    """Select the keypoint backend for every later match (and empty the keypoint cache)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"keypoint backend must be one of {BACKENDS}, got {name!r}")
    _backend = name
    _SIFT_CACHE.clear()


def get_backend() -> str:
    return _backend


def sift_features(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints ``(N, 2)`` as ``(x, y)`` and descriptors (cached by image content)."""
    key = hashlib.blake2b(np.ascontiguousarray(g).tobytes(), digest_size=16).digest()
    key += f"{g.shape}{_backend}".encode()
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
    if _backend == "opencv":
        from .keypoints_cv import detect

        return detect(g)
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
    """RANSAC similarity B -> A (the OpenCV backend may fit a stretch instead); returns (matrix,
    inlier points A, inlier points B, n matches)."""
    if _backend == "opencv":
        from .keypoints_cv import fit

        return fit(kp_a, d_a, kp_b, d_b, seed)
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


def chance_coincidences(
    kp_a: np.ndarray,
    kp_b: np.ndarray,
    matrix: np.ndarray,
    shape_a: tuple[int, ...],
    shape_b: tuple[int, ...],
    radius: float = 3.0,
) -> float:
    """Coincidences a placement would show by chance: the keypoints of each image inside the
    overlap, as if scattered at random over it (dense textures line up a few by luck)."""
    if len(kp_a) == 0 or len(kp_b) == 0:
        return 0.0

    def inside(xy: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        h, w = shape[:2]
        return (
            (xy[:, 0] >= -0.5) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= h - 0.5)
        )

    b_in_a = inside(map_points(matrix, kp_b), shape_a)
    a_in_b = inside(map_points(np.linalg.inv(matrix), kp_a), shape_b)
    area = polygon_mask(shape_a, map_points(matrix, image_corners(shape_b))).sum()
    if area == 0:
        return 0.0
    return float(b_in_a.sum() * a_in_b.sum() * np.pi * radius**2 / area)


COINCIDENCE_SPACING = 12.0
"""Coinciding keypoints closer together than this (working pixels) count once: SIFT finds
several keypoints, at several scales, on one nucleus, and one lined-up blob is no evidence."""


def coincidences(
    kp_a: np.ndarray, kp_b: np.ndarray, matrix: np.ndarray, radius: float = 3.0
) -> int:
    """At how many distinct places B's keypoints, mapped into A, land within ``radius`` of one
    of A's (places ``COINCIDENCE_SPACING`` apart).

    Independent of descriptors: a true alignment of textured content makes keypoints coincide
    all over the overlap; a placement that only lines up one blob or plain background makes
    almost none.
    """
    if len(kp_a) == 0 or len(kp_b) == 0:
        return 0
    from scipy.spatial import cKDTree

    mapped = map_points(matrix, kp_b)
    dist, _ = cKDTree(kp_a).query(mapped, distance_upper_bound=radius)
    hits = mapped[np.isfinite(dist)]
    cells = np.floor(hits / COINCIDENCE_SPACING).astype(np.int64)
    return int(len(np.unique(cells, axis=0))) if len(cells) else 0


def _warp_b_onto_a(a: np.ndarray, b: np.ndarray, matrix: np.ndarray):
    """``b`` warped into ``a``'s frame by the B -> A ``matrix`` and its valid mask, or None
    when the matrix cannot be inverted."""
    try:
        inv = np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        return None
    return warp_image(b, inv, a.shape)


def check_alignment(
    ha: np.ndarray, hb: np.ndarray, cand: Candidate, region: np.ndarray | None = None
) -> Candidate:
    """Pixel agreement and overlap of a candidate, on band-passed working images.

    ``ncc`` is the correlation of the aligned overlap; ``structure`` how much of each image's
    detail (variance) the overlap holds, so a match on empty background cannot pass.
    ``region``: compare only these pixels of A (the overlap figures stay those of the whole).
    """
    aligned = _warp_b_onto_a(ha, hb, cand.matrix)
    if aligned is None:
        cand.ncc = 0.0
        return cand
    warped, valid = aligned
    if region is not None:
        valid = valid & region
    n = int(valid.sum())
    if region is None:
        scale2 = abs(np.linalg.det(cand.matrix[:2, :2]))
        cand.overlap_a = n / ha.size
        cand.overlap_b = min(1.0, n / max(1.0, hb.size * scale2))
    if n < 64:
        cand.ncc = 0.0
        return cand
    pa, pb = ha[valid], warped[valid]
    cand.ncc = pixel_ncc(pa, pb)
    cand.structure = float(min(pa.var() / max(ha.var(), 1e-12), pb.var() / max(hb.var(), 1e-12)))
    return cand


FILL_MARGIN = 8
"""Working pixels added around B's filled corners: the band-pass and low-pass filters spread
the edge between fill and content this far (sigma 4)."""


COARSE_SIGMA = 4.0
"""Gaussian sigma (working pixels) of the low-passed images :func:`coarse_agreement` compares."""


def lowpass(g: np.ndarray, sigma: float = COARSE_SIGMA) -> np.ndarray:
    """The image at the scale of cells and their layout (fine texture and sensor noise gone)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(g, np.float32), sigma)


def coarse_agreement(
    la: np.ndarray, lb: np.ndarray, cand: Candidate, region: np.ndarray | None = None
) -> Candidate:
    """Set ``cand.ncc_coarse``: do the aligned images also agree at a coarse scale?

    A reused region agrees at every scale. Two different fields taken through one camera share
    fixed specks (dust, sensor pattern) at the same pixels: their band-passed detail can line up
    under the identity transform while the cells themselves do not.
    """
    aligned = _warp_b_onto_a(la, lb, cand.matrix)
    if aligned is None:
        cand.ncc_coarse = 0.0
        return cand
    warped, valid = aligned
    if region is not None:
        valid = valid & region
    cand.ncc_coarse = pixel_ncc(la[valid], warped[valid]) if valid.sum() >= 64 else 0.0
    return cand


def agree_outside_fill(
    ha: np.ndarray,
    hb: np.ndarray,
    lows: tuple[np.ndarray, np.ndarray] | None,
    cand: Candidate,
    fill_a: np.ndarray,
) -> Candidate:
    """Pixel agreement without the pixels of A under B's filled corners (``fill_a``, from
    ``prepare.fill_of_free_turn``), for a candidate with enough inliers turned by a free angle
    whose whole overlap disagrees: the fill is in B but not in A. Everything else of the
    overlap must still agree; the overlap figures and the structure measure stay those of the
    whole overlap."""
    inner = Candidate(cand.matrix, cand.method)
    check_alignment(ha, hb, inner, ~fill_a)
    cand.ncc = max(cand.ncc, inner.ncc)
    if lows is not None:
        coarse_agreement(*lows, inner, ~fill_a)
        cand.ncc_coarse = max(cand.ncc_coarse, inner.ncc_coarse)
    return cand


def keypoint_candidates(
    feats_a: tuple[np.ndarray, np.ndarray],
    feats_b: tuple[np.ndarray, np.ndarray],
    gb: np.ndarray,
    ha: np.ndarray,
    hb: np.ndarray,
    seed: int,
    should_stop,
    lows: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Candidate]:
    """Try B as is and mirrored (SIFT handles rotations); best verified candidates first.

    ``lows``: low-passed working images (:func:`lowpass`) for :func:`coarse_agreement`."""
    kp_a, d_a = feats_a
    out: list[Candidate] = []
    for flip in (False, True):
        check_cancel(should_stop, "matching")
        kp_b, d_b = sift_features(np.ascontiguousarray(np.fliplr(gb))) if flip else feats_b
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
        cand = check_alignment(ha, hb, Candidate(m, "keypoints", len(pa), n_matches, pa, pb))
        if lows is not None:
            coarse_agreement(*lows, cand)
        if cand.inliers >= MIN_INLIERS and (
            cand.ncc < MIN_NCC_KEYPOINTS or cand.ncc_coarse < MIN_NCC_COARSE
        ):
            fill = fill_of_free_turn(gb, m, ha.shape, margin=FILL_MARGIN)
            if fill is not None:
                agree_outside_fill(ha, hb, lows, cand, fill[1])
        out.append(cand)
        if cand.inliers >= STRONG_INLIERS and cand.ncc >= 0.5:
            break  # a clear answer: skip the mirrored attempt
    out.sort(
        key=lambda c: (c.inliers >= MIN_INLIERS and c.ncc >= MIN_NCC_KEYPOINTS, c.inliers),
        reverse=True,
    )
    return out
