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

_SAME_SUMS = {0: (0, ()), 1: (1, ()), 2: (0, (0, 1)), 3: (1, (0, 1))}
_SAME_SUMS.update({4: (0, (1,)), 5: (1, (0,)), 6: (0, (0,)), 7: (1, (1,))})
"""Orientation -> (0 or 1, axes): its overlap sums are those of orientation 0 or 1 with the
map reversed along ``axes`` (a sum over a rectangle of a mirrored image is the sum over the
mirrored rectangle), so only two orientations need them computed."""


def _rot180_spectrum(spec: np.ndarray, shape: tuple[int, int], s: tuple[int, int]) -> np.ndarray:
    """``rfft2(x[::-1, ::-1], s)`` from ``spec = rfft2(x, s)`` for a real ``x`` of ``shape``:
    reversing a zero-padded signal conjugates its spectrum and shifts it by ``len - 1``."""
    k0 = np.fft.fftfreq(s[0]) * s[0]
    k1 = np.arange(spec.shape[1])
    phase = np.exp(-2j * np.pi * k0[:, None] * (shape[0] - 1) / s[0]) * np.exp(
        -2j * np.pi * k1[None, :] * (shape[1] - 1) / s[1]
    )
    return phase.astype(spec.dtype) * np.conj(spec)


class _NCCMaps:
    """Masked NCC of every orientation of ``b`` shifted over ``a``, sharing all it can.

    :meth:`map` gives the NCC for every integer shift, computed only on the overlap (``-1``
    where the overlap is below ``min_overlap`` pixels or flat) and the offset: entry ``(i, j)``
    places the oriented b's pixel ``(x, y)`` on a's pixel ``(x + j - off_x, y + i - off_y)``.
    Terms of ``a`` are computed once per orientation shape, B's overlap sums once per shape
    (the others are mirrored maps), and B's spectrum once per pair of orientations 180
    degrees apart; each orientation then costs one inverse FFT (the cross term).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, min_overlap: float) -> None:
        self.a, self.b, self.min_overlap = a, b, min_overlap
        self._a_terms: dict = {}
        self._b_terms: dict = {}
        self._spectra: dict = {}

    def _sizes(self, hb: int, wb: int) -> tuple[tuple[int, int], tuple[int, int]]:
        from scipy import fft

        ha, wa = self.a.shape
        full = (ha + hb - 1, wa + wb - 1)
        return full, (fft.next_fast_len(full[0], real=True), fft.next_fast_len(full[1], real=True))

    def _terms_of_a(self, shape: tuple[int, int]):
        """A's spectrum, the overlap sizes, A's overlap sums and deviations, valid shifts."""
        if shape not in self._a_terms:
            from scipy import fft

            a = self.a
            full, s = self._sizes(*shape)

            def inv(x):
                return fft.irfft2(x, s)[: full[0], : full[1]]

            fa, fa2, f1a = (fft.rfft2(x, s) for x in (a, a * a, np.ones_like(a)))
            f1b = fft.rfft2(np.ones(shape, a.dtype), s)
            n = np.round(inv(f1a * f1b))
            sa, saa = inv(fa * f1b), inv(fa2 * f1b)
            ok = n >= max(self.min_overlap, 16)
            n = np.maximum(n, 1)
            va = saa - sa * sa / n
            # low-variance overlaps (flat background) cannot vouch for a match
            ok &= va > 0.02 * float(a.var()) * n
            self._a_terms[shape] = (fa, f1a, n, sa, np.sqrt(np.maximum(va, 1e-12)), ok, s)
        return self._a_terms[shape]

    def _terms_of_b(self, index: int):
        """B's overlap mean, deviation and validity for orientation ``index``."""
        base, axes = _SAME_SUMS[index]
        if base not in self._b_terms:
            from scipy import fft

            ob = apply_d4(self.b, base)
            full, s = self._sizes(*ob.shape)
            _, f1a, n, *_ = self._terms_of_a(ob.shape)
            bf = ob[::-1, ::-1]
            sb = fft.irfft2(f1a * fft.rfft2(bf, s), s)[: full[0], : full[1]]
            sbb = fft.irfft2(f1a * fft.rfft2(bf * bf, s), s)[: full[0], : full[1]]
            mb = sb / n
            vb = sbb - sb * mb
            ok = vb > 0.02 * float(ob.var()) * n
            self._b_terms[base] = (mb, np.sqrt(np.maximum(vb, 1e-12)), ok)
        return tuple(np.flip(x, axes) if axes else x for x in self._b_terms[base])

    def map(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        from scipy import fft

        ob = apply_d4(self.b, index)
        hb, wb = ob.shape
        full, _ = self._sizes(hb, wb)
        fa, _, _, sa, sd_a, ok_a, s = self._terms_of_a(ob.shape)
        mb, sd_b, ok_b = self._terms_of_b(index)
        if index % 4 >= 2:  # orientation index - 2 turned by 180 degrees
            fb = _rot180_spectrum(self._spectra.pop(index - 2), ob.shape, s)
        else:
            fb = fft.rfft2(ob[::-1, ::-1], s)
            self._spectra[index] = fb
        ncc = fft.irfft2(fa * fb, s)[: full[0], : full[1]]
        ncc -= sa * mb
        ncc /= sd_a * sd_b
        ncc[~(ok_a & ok_b)] = -1.0
        return ncc, (wb - 1, hb - 1)


def _masked_ncc_map(
    a: np.ndarray, b: np.ndarray, min_overlap: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """NCC map of ``b`` (as is) over ``a``: :meth:`_NCCMaps.map` for one orientation."""
    return _NCCMaps(a, b, min_overlap).map(0)


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
    maps = _NCCMaps(sa, sb, min_overlap)
    for index in range(8):
        check_cancel(should_stop, "matching")
        ncc, (off_x, off_y) = maps.map(index)
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
