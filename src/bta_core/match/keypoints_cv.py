"""OpenCV keypoint backend (the default): SIFT detection and a RANSAC similarity fit (or a
stretch, when a picture's aspect ratio was changed).

Same contracts as the scikit-image path (``(N, 2)`` keypoints as ``(x, y)`` plus ``(N, 128)``
descriptors; a 3x3 B -> A similarity matrix with its inlier points), so the rest of the matcher
(mirrored pass, pixel verification, acceptance rules) is shared. OpenCV's SIFT and
``estimateAffinePartial2D`` (rotation + uniform scale + shift; it cannot mirror, so the matcher
still tries B mirrored) run in C++ and are several times faster than the pure-Python ones.
"""

from __future__ import annotations

import numpy as np

RATIO = 0.85
"""Lowe ratio test (best / second-best descriptor distance), as the scikit-image path."""
RANSAC_PX = 3.0
RANSAC_ITERS = 2000
SCALE_RANGE = (1 / 8, 8)
MIN_STRETCH = 0.03
"""Relative difference of the two axis scales from which a fit counts as a stretch."""
MAX_STRETCH = 2.0
"""Largest ratio of the axis scales taken for a stretch (beyond it, a chance consensus)."""
MAX_SKEW = 0.035
"""Largest cosine between the stretched axes (2 degrees off square): a shear is no stretch."""
MIN_SPREAD = 10.0
"""Working pixels the inliers must spread (standard deviation) across their narrower axis."""
STRETCH_GAIN = 1.5
STRETCH_MIN_GAIN = 8
"""A stretch replaces the similarity when it holds this many times its inliers, and at least
this many more."""
MAX_KEYPOINTS = 1500
"""Strongest keypoints kept per image (bounds the descriptor matching cost on dense textures)."""
SPARSE = 100
"""Below this many keypoints at OpenCV's default contrast threshold, detect again at a lower one
(sparse fluorescence fields: a few nuclei on black)."""
_THRESHOLDS = (0.04, 0.01)

_SIFT: dict[float, object] = {}


def _cv2():
    import cv2

    return cv2


def _detector(contrast: float):
    if contrast not in _SIFT:
        _SIFT[contrast] = _cv2().SIFT_create(nfeatures=MAX_KEYPOINTS, contrastThreshold=contrast)
    return _SIFT[contrast]


def to_uint8(g: np.ndarray) -> np.ndarray:
    """A grey float image in [0, 1] as uint8 (what OpenCV's SIFT expects)."""
    return np.ascontiguousarray(np.clip(np.asarray(g, np.float32) * 255.0 + 0.5, 0, 255), np.uint8)


def detect(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints ``(N, 2)`` float64 ``(x, y)`` and float32 descriptors ``(N, 128)``."""
    u8 = to_uint8(g)
    for contrast in _THRESHOLDS:
        kps, desc = _detector(contrast).detectAndCompute(u8, None)
        if desc is not None and len(kps) >= SPARSE:
            break
    if desc is None or not kps:
        return np.zeros((0, 2)), np.zeros((0, 128), dtype=np.float32)
    xy = np.array([k.pt for k in kps], dtype=np.float64)
    return xy, np.ascontiguousarray(desc, dtype=np.float32)


def strongest_root_sift(g: np.ndarray, n: int) -> np.ndarray:
    """RootSIFT descriptors ``(<= n, 128)`` (unit L2 norm) of the ``n`` strongest keypoints of a
    grey image, for retrieval: nearest by L2 is highest inner product."""
    key = -n  # its own detector: a small cap, one contrast threshold
    if key not in _SIFT:
        _SIFT[key] = _cv2().SIFT_create(nfeatures=n, contrastThreshold=_THRESHOLDS[1] * 2)
    _, desc = _SIFT[key].detectAndCompute(to_uint8(g), None)
    if desc is None:
        return np.zeros((0, 128), dtype=np.float32)
    desc = desc / (desc.sum(axis=1, keepdims=True) + 1e-7)
    return np.sqrt(desc, dtype=np.float32)


def match_descriptors(d_a: np.ndarray, d_b: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """Mutual nearest neighbours passing the ratio test: ``(M, 2)`` index pairs (A, B)."""
    if len(d_a) < 2 or len(d_b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    a = np.asarray(d_a, np.float32)
    b = np.asarray(d_b, np.float32)
    # one distance matrix serves both directions (squared L2, clipped at 0 for rounding)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0, out=d2)
    # nearest and runner-up per row: two linear scans (5-10x cheaper than an argpartition)
    rows = np.arange(len(a))
    nn = d2.argmin(axis=1)
    best = d2[rows, nn]
    d2[rows, nn] = np.inf
    runner = d2.min(axis=1)
    d2[rows, nn] = best
    ok = best <= (ratio * ratio) * runner  # ratio test on distances, squared
    ok &= d2.argmin(axis=0)[nn] == rows  # mutual nearest neighbours
    return np.c_[rows[ok], nn[ok]].astype(np.int64)


def fit(
    kp_a: np.ndarray, d_a: np.ndarray, kp_b: np.ndarray, d_b: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """RANSAC similarity (or stretch, ``_stretched_fit``) B -> A: ``(3x3 matrix, inlier points
    A, inlier points B, n matches)``."""
    cv2 = _cv2()
    if len(kp_a) < 3 or len(kp_b) < 3:
        return None
    pairs = match_descriptors(d_a, d_b)
    if len(pairs) < 3:
        return None
    src = np.ascontiguousarray(kp_b[pairs[:, 1]], np.float64)
    dst = np.ascontiguousarray(kp_a[pairs[:, 0]], np.float64)
    cv2.setRNGSeed(int(seed))
    m, inl = _ransac(cv2.estimateAffinePartial2D, src, dst)
    if m is not None and inl is not None:
        inl = inl.ravel().astype(bool)
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            m = None
    if m is None or inl is None or inl.sum() < 3:
        m, inl = None, np.zeros(len(src), dtype=bool)
    stretched = _stretched_fit(src, dst, int(inl.sum()))
    if stretched is not None:
        m, inl = stretched
    if m is None:
        return None
    matrix = np.vstack([m.astype(np.float64), [0.0, 0.0, 1.0]])
    return matrix, dst[inl], src[inl], len(pairs)


def _ransac(estimate, src: np.ndarray, dst: np.ndarray):
    """``estimate`` (an OpenCV 2-D transform estimator) fitted by RANSAC with the matcher's
    tolerance: ``(2x3 matrix or None, inlier mask or None)``."""
    return estimate(
        src.astype(np.float32),
        dst.astype(np.float32),
        method=_cv2().RANSAC,
        ransacReprojThreshold=RANSAC_PX,
        maxIters=RANSAC_ITERS,
        confidence=0.995,
        refineIters=10,
    )


def _stretched_fit(
    src: np.ndarray, dst: np.ndarray, similar: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """A RANSAC affine fit B -> A when it is a stretch (B's aspect ratio changed, as when a
    figure panel is dragged wider) that holds clearly more correspondences than the similarity
    (``similar`` inliers); else None. A 10 % stretch of a 600 px picture already puts its far
    side 30 px off any similarity, which then keeps only a band of it."""
    m, inl = _ransac(_cv2().estimateAffine2D, src, dst)
    if m is None or inl is None:
        return None
    inl = inl.ravel().astype(bool)
    n = int(inl.sum())
    if n < max(STRETCH_GAIN * similar, similar + STRETCH_MIN_GAIN):
        return None
    lin = m[:, :2].astype(np.float64)
    sv = np.linalg.svd(lin, compute_uv=False)
    if sv[1] <= 0 or not 1 + MIN_STRETCH <= sv[0] / sv[1] <= MAX_STRETCH:
        return None  # no stretch to speak of (the similarity serves), or no plausible one
    if not SCALE_RANGE[0] <= float(np.sqrt(sv[0] * sv[1])) <= SCALE_RANGE[1]:
        return None

    def square(v: np.ndarray, w: np.ndarray) -> bool:
        return abs(float(v @ w)) <= MAX_SKEW * float(np.linalg.norm(v) * np.linalg.norm(w))

    # a stretch along B's axes (or A's) keeps them square; a shear does not
    if not (square(lin[:, 0], lin[:, 1]) or square(lin[0], lin[1])):
        return None
    spread = np.linalg.eigvalsh(np.cov(src[inl].T)) if n > 2 else np.zeros(2)
    if np.sqrt(max(float(spread[0]), 0.0)) < MIN_SPREAD:
        return None  # inliers along a line fix no second axis
    return m, inl
