"""Panels of a composite figure: the rectangles between its gutters.

A journal figure puts several images side by side, separated by strips of one colour (white
or black). Matched as a whole, a panel that is darker or smaller than its neighbours is lost:
the grey stretch, keypoint thresholds and correlation statistics are those of the whole figure. The
matcher (``locate``) therefore tries each panel on its own when the whole image did not match.

A gutter is a run of rows (or columns) whose pixels all have one colour (range at most
``GUTTER_TOLERANCE`` of the image's range), unlike the content on either side of it; or unlike
one side when the other is only a caption strip up to the border; or exactly uniform beside
a dark picture's noisy background (a black gutter between fluorescence panels). Cuts
alternate rows, columns, rows (an X-Y cut of depth 3); pieces smaller than ``MIN_PANEL_SIDE``
pixels or ``MIN_PANEL_FRACTION`` of the side are labels or decoration and are dropped.
"""

from __future__ import annotations

import numpy as np

GUTTER_TOLERANCE = 0.06
"""A row or column is a gutter when its pixel range is at most this share of the image's
(JPEG ringing at quality 75 leaves about 0.03-0.06 near a gutter's edges)."""
GUTTER_CONTRAST = 0.1
"""A gutter's colour differs from the lines beside it by more than this share of the range."""
SIDE_LINES = 3
"""Lines on each side of a gutter whose mean colour it is compared with..."""
RINGING = 3
"""...after skipping this many: JPEG ringing beside a gutter."""
MIN_GUTTER = 2
"""Gutters narrower than this many pixels are ignored (a one-pixel line can be content)."""
EXACT = 0.025
"""A drawn gutter's lines are exactly uniform: range at most this share of full scale (white;
JPEG q85 ringing included)..."""
NOISE = 0.01
"""...while a dark picture's background beside it lies off its colour by more than this share
of full scale at most pixels (its noise; grey levels, not a share of a dark image's range)."""
MIN_PANEL_SIDE = 48
MIN_PANEL_FRACTION = 0.08
MAX_PANELS = 12
"""More pieces than this is a grid of tiles or a sparse image, not a figure: no panels."""

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, end-exclusive, in the image's pixels."""


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _split(s: int, e: int, steps: np.ndarray) -> list[tuple[int, int]]:
    """``[s, e)`` cut before each line where ``steps`` is True (its colour changes)."""
    cuts = [s, *(k for k in range(s + 1, e) if steps[k]), e]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _exact_core(part: np.ndarray, axis: int, s: int, e: int, exact: float) -> tuple[int, int]:
    """The longest run of lines in ``[s, e)`` whose pixel range is at most ``exact`` and
    within ``exact / 2`` of the run's flattest line (a dark picture's flat lines beside a
    drawn gutter are flat, but less so)."""
    across = 1 - axis
    sub = part[s:e] if axis == 0 else part[:, s:e]
    spread = (sub.max(axis=across) - sub.min(axis=across)).max(axis=-1)
    tight = spread <= min(exact, float(spread.min()) + exact / 2)
    runs = _runs(tight)
    if not runs:
        return s, s
    a, b = max(runs, key=lambda r: r[1] - r[0])
    return s + a, s + b


def _noisy_sides(
    part: np.ndarray, axis: int, s: int, e: int, colour: np.ndarray, noise: float
) -> list[bool | None]:
    """For each side of the run ``[s, e)``: whether the picture lines there (past JPEG
    ringing) lie off its colour by more than ``noise`` at most of their pixels, as a dark
    picture's noisy background does beside an exactly uniform drawn gutter; None past the
    border."""
    n = part.shape[axis]
    out: list[bool | None] = []
    for lo, hi in (
        (s - RINGING - SIDE_LINES, s - RINGING),
        (e + RINGING, e + RINGING + SIDE_LINES),
    ):
        lo, hi = max(lo, 0), min(hi, n)
        if (lo == 0 and s == 0) or (hi == n and e == n):
            out.append(None)
            continue
        if hi <= lo:  # closer to the border than the ringing: a strip, judged by the caller
            out.append(False)
            continue
        side = part[lo:hi] if axis == 0 else part[:, lo:hi]
        out.append(float(np.median(np.abs(side - colour).max(axis=-1))) > noise)
    return out


def _is_gutter(tests: list[bool | None], strips: list[bool]) -> bool:
    """A run with these side tests (True: unlike it, None: past the border) and these sides
    that are only a thin strip up to the border is a gutter (or a margin): each side unlike
    it, past the border, or a strip (a caption line), and at least one side unlike it."""
    ok = all(t is None or t or strip for t, strip in zip(tests, strips, strict=True))
    return ok and any(t for t in tests)


def _segments(
    part: np.ndarray,
    axis: int,
    tol: float,
    contrast: float,
    min_side: int,
    exact: float = 0.0,
    noise: float = np.inf,
) -> list[tuple[int, int]]:
    """The content runs of ``part`` between gutters along ``axis`` (0: cut rows, 1: columns).

    A gutter is a run of one-colour lines whose colour is unlike the lines on each side of it
    (the empty rows of a dark fluorescence image are like their neighbours: background, not a
    gutter). Inside the content it must be ``MIN_GUTTER`` lines wide; at the border any run is
    margin. Two exceptions: a side that is only a strip narrower than ``min_side`` up to the
    border (a caption line under the panels) need not differ; and a run of lines exactly
    uniform (range at most ``exact``) with a noisy background on its sides (a black gutter
    beside dark pictures) is a gutter although its colour is theirs. A margin must also be
    unlike the median of the lines beside it, not only their mean (a scale bar's)."""
    across = 1 - axis  # the lines run across this axis
    colours = part.mean(axis=across)  # (n, C)
    flat = (part.max(axis=across) - part.min(axis=across)).max(axis=-1) <= tol
    n = len(flat)
    gutter = np.zeros(n, dtype=bool)
    # one run per colour: a white margin below black empty rows is a run of its own
    steps = np.r_[False, np.abs(np.diff(colours, axis=0)).max(axis=-1) > tol]
    runs = [(s, e) for s0, e0 in _runs(flat) for s, e in _split(s0, e0, steps)]
    for s, e in runs:
        if e - s < MIN_GUTTER and 0 < s and e < n:
            continue
        colour = colours[s:e].mean(axis=0)
        strips = [0 < s < min_side, 0 < n - e < min_side]
        # the lines just past the run, beyond a JPEG's ringing (which keeps them near the
        # gutter's colour without being flat)
        before = colours[max(0, s - RINGING - SIDE_LINES) : max(0, s - RINGING)]
        after = colours[e + RINGING : e + RINGING + SIDE_LINES]
        sides = [before if len(before) else colours[:s], after if len(after) else colours[e:]]
        unlike = [
            bool(np.abs(side.mean(axis=0) - colour).max() > contrast) if len(side) else None
            for side in sides
        ]
        if (s == 0 or e == n) and any(unlike):
            # a margin is unlike most of the picture beside it, not only its labels (the
            # dark rows under a panel's white scale bar are picture, not margin)
            k = 1 if s == 0 else 0
            lo, hi = (
                (e + RINGING, e + RINGING + SIDE_LINES)
                if k
                else (s - RINGING - SIDE_LINES, s - RINGING)
            )
            lines = part[max(lo, 0) : hi] if axis == 0 else part[:, max(lo, 0) : hi]
            if lines.size:
                median = np.median(lines.reshape(-1, lines.shape[-1]), axis=0)
                unlike[k] = bool(unlike[k] and np.abs(median - colour).max() > contrast)
        if _is_gutter(unlike, strips):
            gutter[s:e] = True
            continue
        cs, ce = _exact_core(part, axis, s, e, exact)
        if ce - cs < MIN_GUTTER or (0 < cs and s == 0) or (ce < n and e == n):
            continue  # a margin's exact core must reach the border
        noisy = _noisy_sides(part, axis, cs, ce, colours[cs:ce].mean(axis=0), noise)
        if _is_gutter(noisy, [0 < cs < min_side, 0 < n - ce < min_side]):
            gutter[cs:ce] = True
    return [(s, e) for s, e in _runs(~gutter) if e - s >= min_side]


def find_panels(image: np.ndarray) -> list[Box]:
    """The panels of ``image`` (``(H, W, C)`` or ``(H, W)``), or ``[]`` when it is one picture.

    Returns two or more boxes, top to bottom and left to right within a band.
    """
    img = image[..., None] if image.ndim == 2 else image
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape[:2]
    spread = float(img.max() - img.min())
    unit = 1.0 if float(img.max()) <= 1.0 else 255.0  # grey levels 0-1 or 0-255
    if spread <= 0:
        return []
    tol = GUTTER_TOLERANCE * spread
    # one picture, at once: a first cut needs a one-colour row or column right across it
    # (tested on every 4th pixel: a line of one colour is one colour there too)
    rows, cols = img[:, ::4], img[::4]
    if not (
        ((rows.max(1) - rows.min(1)).max(-1) <= tol).any()
        or ((cols.max(0) - cols.min(0)).max(-1) <= tol).any()
    ):
        return []

    def cut(box: Box, axis: int, depth: int) -> list[Box]:
        y0, y1, x0, x1 = box
        part = img[y0:y1, x0:x1]
        side = h if axis == 0 else w
        min_side = max(MIN_PANEL_SIDE, int(MIN_PANEL_FRACTION * side))
        segs = _segments(
            part, axis, tol, GUTTER_CONTRAST * spread, min_side, EXACT * unit, NOISE * unit
        )
        if not segs:
            return []
        boxes = [
            (y0 + s, y0 + e, x0, x1) if axis == 0 else (y0, y1, x0 + s, x0 + e) for s, e in segs
        ]
        if depth == 0:
            return boxes
        out: list[Box] = []
        for b in boxes:  # one inner piece: the panel without its margins and caption
            out += cut(b, 1 - axis, depth - 1) or [b]
        return out

    panels = cut((0, h, 0, w), 0, 2)
    if not 2 <= len(panels) <= MAX_PANELS:
        return []
    return panels
