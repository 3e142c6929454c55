"""The geometry of a match: the B -> A transform, point mapping, masks and warping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..dihedral import D4_NAMES, apply_d4, describe_d4

STRETCH_SHOWN = 0.02
"""A change of aspect ratio from which ``MatchTransform.describe`` names it."""


@dataclass
class MatchTransform:
    """Mapping from B pixel coordinates ``(x, y, 1)`` to A: ``p_a = matrix @ p_b``.

    The linear part is ``flip_x @ (scale * R(angle))`` read in image axes (x right, y down),
    times an axis stretch for a stretched copy (``stretch``; ``angle`` is then that of the
    nearest rotation and ``scale`` the geometric mean of the two axis scales).
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
    stretch: float = 1.0
    """B's width / height ratio over that of A's region (1.0: no stretch; 1.2: B is 20 %
    wider for its height, as when a figure panel was dragged wider, or squeezed in height)."""

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> MatchTransform:
        """Decompose a 3x3 similarity (possibly mirrored) or stretched (affine) matrix B -> A;
        the angle is that of the nearest rotation, the scale the mean of the axis scales."""
        m = np.asarray(matrix, dtype=np.float64)
        lin = m[:2, :2]
        flip = bool(np.linalg.det(lin) < 0)
        rot = np.diag([-1.0, 1.0]) @ lin if flip else lin
        scale = float(math.sqrt(abs(np.linalg.det(rot))))
        u, _, vt = np.linalg.svd(rot)
        nearest = u @ vt  # the rotation part (polar decomposition)
        angle = float(math.degrees(math.atan2(nearest[1, 0], nearest[0, 0])))
        # A pixels per B pixel along B's x and y axes: their ratio is B's change of aspect
        per_x, per_y = np.hypot(lin[0, 0], lin[1, 0]), np.hypot(lin[0, 1], lin[1, 1])
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
            stretch=float(per_y / per_x) if per_x > 0 and per_y > 0 else 1.0,
        )

    def describe(self) -> str:
        """How B looks relative to A in words; a free angle whole: ``"B is A turned 60.0
        degrees counter-clockwise"``, ``"B is A mirrored left-right, then turned 17.0 degrees
        clockwise"``; a stretch named after it: ``"same orientation, stretched 1.20x wider"``."""
        stretch = ""
        if abs(self.stretch - 1.0) >= STRETCH_SHOWN:
            wider = self.stretch > 1.0
            factor = self.stretch if wider else 1.0 / self.stretch
            stretch = f", stretched {factor:.2f}x {'wider' if wider else 'taller'}"
        if abs(self.residual_angle) < 1.0:
            return describe_d4(self.dihedral) + stretch
        # a free turn: the whole angle, -180..180 (positive: counter-clockwise as displayed)
        angle = (self.angle + 180.0) % 360.0 - 180.0
        turn = f"{abs(angle):.1f} degrees {'counter-clockwise' if angle > 0 else 'clockwise'}"
        if self.flip:
            return f"B is A mirrored left-right, then turned {turn}{stretch}"
        return f"B is A turned {turn}{stretch}"

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
            "stretch": round(self.stretch, 5),
            "translation": [round(v, 2) for v in self.translation],
        }


def image_corners(shape: tuple[int, ...]) -> np.ndarray:
    """Outer pixel-edge corners of an image, ``(x, y)``, clockwise from top-left."""
    h, w = shape[:2]
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def map_points(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    pts = np.c_[xy, np.ones(len(xy))] @ np.asarray(matrix).T
    return pts[:, :2] / pts[:, 2:3]


def polygon_mask(shape: tuple[int, ...], poly_xy: np.ndarray) -> np.ndarray:
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


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def d4_to_source(shape: tuple[int, int], index: int) -> np.ndarray:
    """3x3 matrix mapping pixel ``(x, y)`` of ``apply_d4(g, index)`` back to ``g``."""
    return np.array(_d4_to_source((int(shape[0]), int(shape[1])), int(index)))


@lru_cache(maxsize=256)
def _d4_to_source(shape: tuple[int, int], index: int) -> tuple:
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    ox, oy = apply_d4(xs, index), apply_d4(ys, index)
    oh, ow = ox.shape
    pts = [(0, 0), (ow - 1, 0), (0, oh - 1)]
    src = np.array([[ox[y, x], oy[y, x], 1.0] for x, y in pts])
    dst = np.array([[x, y, 1.0] for x, y in pts])
    sol = np.linalg.lstsq(dst, src, rcond=None)[0].T  # rows: x_src, y_src, 1
    sol[2] = [0, 0, 1]
    return tuple(map(tuple, np.round(sol, 6)))


def warp_image(
    image: np.ndarray, matrix_out_to_in: np.ndarray, out_shape: tuple[int, int], order: int = 1
):
    """Resample ``image`` into a frame of ``out_shape``; returns (warped, valid mask).

    ``matrix_out_to_in`` is an affine 3x3 matrix on ``(x, y)`` pixel coordinates (pixel centres
    at integers). Valid pixels are those whose source lies inside ``image``'s pixel area (the
    same footprint as the masks); the half-pixel border ring takes the nearest edge value.
    ``order`` 1 is bilinear, 0 nearest (OpenCV's ``warpAffine``).
    """
    import cv2

    m = np.asarray(matrix_out_to_in, dtype=np.float64)
    h, w = (int(v) for v in out_shape[:2])
    src = np.ascontiguousarray(image, dtype=np.float32)
    interp = cv2.INTER_LINEAR if order >= 1 else cv2.INTER_NEAREST
    if src.ndim == 3 and src.shape[-1] > 4:  # OpenCV handles up to 4 channels at once
        out = np.stack(
            [warp_image(src[..., c], m, out_shape, order)[0] for c in range(src.shape[-1])], -1
        )
    else:
        out = cv2.warpAffine(
            src, m[:2], (w, h), flags=interp | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )
        if out.ndim == 2 and src.ndim == 3:  # OpenCV drops a single channel axis
            out = out[..., None]
    # source coordinates of every output pixel, inside the input's pixel area?
    ys = np.arange(h, dtype=np.float64)[:, None]
    xs = np.arange(w, dtype=np.float64)[None, :]
    sx = m[0, 0] * xs + (m[0, 1] * ys + m[0, 2])
    sy = m[1, 0] * xs + (m[1, 1] * ys + m[1, 2])
    ih, iw = image.shape[:2]
    eps = 1e-9
    valid = (
        (sx >= -0.5 - eps) & (sx <= iw - 0.5 + eps) & (sy >= -0.5 - eps) & (sy <= ih - 0.5 + eps)
    )
    out[~valid] = 0.0
    return out, valid
