"""Correlation fallback for textures without keypoints: masked NCC over B's 8 orientations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..dihedral import apply_d4
from ..runtime import check_cancel
from .keypoints import Candidate, check_alignment
from .params import CORR_SIDE, MIN_OVERLAP
from .prepare import bandpass, resize_by
from .transform import d4_to_source


def _masked_ncc_map(
    a: np.ndarray, b: np.ndarray, min_overlap: float, memo: dict | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """NCC of ``b`` shifted over ``a`` for every integer shift, computed only on the overlap.

    Returns the map (``-1`` where the overlap is below ``min_overlap`` pixels) and the offset:
    entry ``(i, j)`` places b's pixel ``(x, y)`` on a's pixel ``(x + j - off_x, y + i - off_y)``.
    ``memo`` (one dict per ``a``) keeps the terms that depend only on ``a`` and on ``b``'s shape,
    so the 8 orientations of one B cost 2 forward and 3 inverse FFTs each instead of 6 and 6.
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

    memo = {} if memo is None else memo
    key = (hb, wb)
    if key not in memo:
        fa, fa2, f1a = f(a), f(a * a), f(np.ones_like(a))
        f1b = f(np.ones_like(bf))
        memo[key] = (fa, f1a, np.round(inv(f1a * f1b)), inv(fa * f1b), inv(fa2 * f1b))
    fa, f1a, n, sa, saa = memo[key]
    fb, fb2 = f(bf), f(bf * bf)
    sb, sbb, sab = inv(f1a * fb), inv(f1a * fb2), inv(fa * fb)
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


def refine_shift(ha: np.ndarray, hb: np.ndarray, cand: Candidate, radius: float = 1.5) -> Candidate:
    """Polish a coarse placement by a small translation search at working resolution."""
    best = check_alignment(ha, hb, cand)
    for step in (radius, radius / 3):
        centre = best.matrix
        for dy in (-step, 0.0, step):
            for dx in (-step, 0.0, step):
                if dx == dy == 0.0:
                    continue
                shift = np.array([[1.0, 0, dx], [0, 1, dy], [0, 0, 1]])
                trial = check_alignment(ha, hb, replace(cand, matrix=shift @ centre))
                if trial.ncc > best.ncc:
                    best = trial
    return best


def correlation_candidates(ga: np.ndarray, gb: np.ndarray, should_stop) -> list[Candidate]:
    """Best equal-scale placement of B's 8 orientations over A, for full-size grey images.

    Both images are shrunk by one common factor (equal scale is the assumption here). Returns
    at most two candidates (matrices in full-size coordinates), best first; ``peak`` holds the
    correlation and ``info`` how far the runner-up orientation trails (a distinct peak).
    """
    factor = min(1.0, CORR_SIDE / max(ga.shape + gb.shape))
    sa, to_a = resize_by(ga, factor)
    sb, to_b = resize_by(gb, factor)
    sa, sb = bandpass(sa), bandpass(sb)
    min_overlap = MIN_OVERLAP * min(sa.size, sb.size)
    out = []
    memo: dict = {}
    for index in range(8):
        check_cancel(should_stop, "matching")
        ob = apply_d4(sb, index)
        ncc, (off_x, off_y) = _masked_ncc_map(sa, ob, min_overlap, memo)
        i, j = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        peak = float(ncc[i, j])
        if peak <= 0:
            continue
        di, dj = _subpixel(ncc, i, j)
        shift = np.array([[1.0, 0, j + dj - off_x], [0, 1, i + di - off_y], [0, 0, 1]])
        m_small = shift @ np.linalg.inv(d4_to_source(sb.shape, index))  # small B -> small A
        m = np.linalg.inv(to_a) @ m_small @ to_b
        out.append(Candidate(m, "correlation", peak=peak))
    out.sort(key=lambda c: c.peak, reverse=True)
    for c in out:
        c.margin = c.peak - max((o.peak for o in out if o is not c), default=0.0)
    return out[:2]
