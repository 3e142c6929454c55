"""Image preparation for matching: float RGB, contrast-stretched grey, band-pass, resizing."""

from __future__ import annotations

import math

import numpy as np

from ..imageio import to_float_rgb
from .params import HEATMAP_SIDE, MIN_IMAGE_SIDE, MIN_SIDE


def to_grey(rgb: np.ndarray, clip: bool = True) -> np.ndarray:
    """Luminance, contrast-stretched to the 0.5-99.5 percentiles (SIFT thresholds are absolute).

    ``clip=False`` keeps the levels beyond them: each image clips at its own percentiles, so a
    crop and its source would saturate bright nuclei differently (``edits`` compares levels)."""
    g = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    lo, hi = np.percentile(g, (0.5, 99.5))
    if hi - lo < 1e-6:
        return np.zeros_like(g)
    g = (g - lo) / (hi - lo)
    return (np.clip(g, 0.0, 1.0) if clip else g).astype(np.float32)


def bandpass(g: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Difference of Gaussians: keeps cell-scale detail, drops the smooth shading that makes
    unrelated images of the same kind correlate. (OpenCV's blur with scipy's reflected borders
    and 4-sigma support: the same numbers as ``scipy.ndimage.gaussian_filter``, ~20x faster.)"""
    import cv2

    g = np.ascontiguousarray(g, dtype=np.float32)

    def blur(s: float) -> np.ndarray:
        k = 2 * int(4 * s + 0.5) + 1
        return cv2.GaussianBlur(g, (k, k), s, borderType=cv2.BORDER_REFLECT)

    return blur(sigma) - blur(4 * sigma)


def resize_by(g: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
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


def work_factor(shape: tuple[int, ...], max_side: int) -> float:
    long = max(shape[:2])
    if long > max_side:
        return max_side / long
    if long < MIN_SIDE:
        return min(4.0, MIN_SIDE / long)
    return 1.0


def pixel_ncc(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 16:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


class ImageTooSmallError(ValueError):
    """An image below the matcher's minimum side: the pair is not verified, and says why."""


def as_float_rgb(image: np.ndarray, name: str) -> np.ndarray:
    """``imageio.to_float_rgb`` plus the matcher's own minimum size; errors name the image."""
    rgb = to_float_rgb(image, name)
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        shape = f"{rgb.shape[0]}x{rgb.shape[1]} pixels"
        raise ImageTooSmallError(f"{name}: image too small to match ({shape})")
    return rgb


def common_scale(
    grey_a: np.ndarray, grey_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both images shrunk by one factor (none up to ``params.HEATMAP_SIDE``) and their
    full-size -> shrunk matrices: comparing two images pixel by pixel needs one scale."""
    factor = min(1.0, HEATMAP_SIDE / max(grey_a.shape[:2] + grey_b.shape[:2]))
    ga, to_a = resize_by(grey_a, factor)
    gb, to_b = resize_by(grey_b, factor)
    return ga, gb, to_a, to_b


FILL_TOLERANCE = 0.02
"""Grey levels (0-1) within which a filled corner counts as one constant colour (JPEG ringing)."""
FREE_ROTATION_DEGREES = 1.0
"""A transform this far or more from a plain quarter turn is a free rotation."""


def is_free_rotation(matrix: np.ndarray) -> bool:
    """Is the similarity ``matrix`` turned by a free angle (not a multiple of 90 degrees)?"""
    from .transform import MatchTransform

    return abs(MatchTransform.from_matrix(matrix).residual_angle) >= FREE_ROTATION_DEGREES


def corner_fill(g: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """The filled corners of a grey image turned by a free angle: each corner's connected region
    of its own constant grey, widened by ``margin`` pixels; None when they cover under 1 % of it.

    Slide and image software fill the corners of a rotated panel with one colour (black, white):
    pixels that are in the copy but not in its source. Only meaningful for a free rotation
    (``is_free_rotation``); elsewhere a corner region is real content."""
    from scipy.ndimage import binary_dilation, label

    h, w = g.shape
    fill = np.zeros(g.shape, dtype=bool)
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        if fill[y, x]:
            continue
        regions, _ = label(np.abs(g - g[y, x]) <= FILL_TOLERANCE)
        fill |= regions == regions[y, x]
    if fill.mean() < 0.01:
        return None
    return binary_dilation(fill, iterations=margin) if margin > 0 else fill


def fill_of_free_turn(
    gb: np.ndarray, m_b_to_a: np.ndarray, shape_a: tuple[int, ...], margin: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """B's filled corners (:func:`corner_fill` of grey ``gb``, widened by ``margin``) and the
    pixels of A they land on under ``m_b_to_a`` (B -> A); None unless the transform is a free
    turn (:func:`is_free_rotation`) and B has such corners. What every comparison of a turned
    panel with its source leaves out: the fill is in B but holds nothing of A."""
    from .transform import warp_image

    if not is_free_rotation(m_b_to_a):
        return None
    fill_b = corner_fill(np.clip(gb, 0, 1), margin=margin)
    if fill_b is None:
        return None
    moved, _ = warp_image(fill_b.astype(np.float32), np.linalg.inv(m_b_to_a), shape_a[:2])
    return fill_b, moved >= 0.5
