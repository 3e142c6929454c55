"""Figure graphics: what a figure adds to its pictures (labels, captions, gutters), not content.

Two figures made with one template share their graphics: an "A" in a white box at each panel's
corner, a white gutter, a caption in black type. Those are sharp, high-contrast and identical,
so they line up under the identity and can carry a keypoint match and its pixel agreement
although no picture is shared. Graphics are drawn in pure white, and in pure black on white
(type on a label or caption), in pure colours (yellow letters, red arrows), in flat black
bands and gutters, in thin antialiased type of a strong colour ("DAPI" in green on black) and
as colour bars (a gradient along the bar, constant across it); microscope pictures rarely
are. A saturated fluorescence picture (white cells on a flat black background) can be marked
almost whole: ``panel_search.content_check`` then falls back to the whole overlap. ``graphics_mask`` marks them at the matcher's working
size, grown by the band-pass's reach, so ``panel_search.content_check`` can ask whether a
match still holds on the rest.
"""

from __future__ import annotations

import numpy as np

WHITE = 0.98
"""Level (0-1) from which a channel is full, as graphics are drawn (white, pure colours)."""
BLACK = 0.02
"""Grey level up to which a pixel is black: graphics when near white (type on a label)."""
NEAR_WHITE = 4
"""Full-size pixels from white within which black counts as type on a label or caption."""
FLAT = 3
"""Half-width (full-size pixels) of the square that must be all black for black to be flat."""
COLOURFUL = 100
"""Spread of the channels (of 255) from which a flat pixel is a drawn colour."""
THIN = 4.5
"""Distance (full-size pixels) to weak colour within which every pixel of a thin stroke lies."""
THIN_MIN_AREA = 4
"""Smaller strongly coloured specks are left alone (JPEG colour noise)."""
BAR_RUN = 7
"""Pixels along which a colour bar's colour is constant (across the bar)..."""
BAR_LENGTH = 21
"""...over this many pixels along the bar, where its colour changes."""
BAR_TOLERANCE = 2
"""Levels (of 255) within which a colour bar's row is constant, and over twice which its colour
changes along the bar."""
BAR_SIDE = 1024
"""Colour bars are looked for on every n-th pixel of a larger image, n to bring it to this side."""
REACH = 6
"""Working pixels the mask is grown by: the band-pass (sigma 4) spreads an edge this far."""


def graphics_mask(rgb: np.ndarray, work_shape: tuple[int, ...]) -> np.ndarray:
    """Working-size mask (``work_shape``) of the graphics of ``rgb`` (full size, its own levels
    in 0-1, not contrast-stretched: a stretch saturates the brightest cells too): pure colours
    (every channel at 0 or 1, not black: white, pure red, green, yellow...), strong colours
    flat over 3x3 pixels (``_flat_colour``), thin coloured type (``_thin_colour``), colour
    bars (``_colour_bar``), black near pure or flat colour, and flat black; a working pixel is
    marked when any full-size pixel under it is."""
    return graphics_masks(rgb, work_shape)[1]


def graphics_masks(rgb: np.ndarray, work_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(drawn, marked)``: ``graphics_mask`` without its flat black (gutters and bands, but
    also the background of a dark fluorescence picture that carries a letter box), and with it."""
    import cv2

    chans = [rgb[..., c] for c in range(rgb.shape[-1])] if rgb.ndim == 3 else [rgb]
    high = [c >= WHITE for c in chans]  # per channel: fast
    low = [c <= BLACK for c in chans]
    pure = np.logical_and.reduce([h | lo for h, lo in zip(high, low, strict=True)])
    pure &= np.logical_or.reduce(high)
    # thin coloured type and colour bars are marked alone: no sign that black is drawn (real
    # pictures in pseudo-colour hold a little of them)
    drawn = np.zeros_like(pure)
    if len(chans) == 3:
        pure |= _flat_colour(chans)
        drawn = _thin_colour(chans) | _colour_bar(chans)
    if not pure.any() and not drawn.any():
        empty = np.zeros(work_shape[:2], dtype=bool)
        return empty, empty
    dark = np.logical_and.reduce(low).view(np.uint8)

    def square(r: int) -> np.ndarray:
        return np.ones((2 * r + 1, 2 * r + 1), np.uint8)

    drawn |= pure | (dark & cv2.dilate(pure.view(np.uint8), square(NEAR_WHITE))).astype(bool)
    # a figure that has graphics draws its black gutters and bands flat: black whose whole
    # neighbourhood is black (not a dark picture's noisy background, nor its darkest cells)
    flat = cv2.dilate(cv2.erode(dark, square(FLAT)), square(FLAT)).astype(bool)
    marked = drawn | flat if pure.any() else drawn
    return _to_work(drawn, work_shape), _to_work(marked, work_shape)


def _to_work(marked: np.ndarray, work_shape: tuple[int, ...]) -> np.ndarray:
    """A full-size mask at working size, any-pooled and grown by ``REACH``."""
    import cv2

    h, w = work_shape[:2]
    # any-pooling: the area mean of a working pixel's block is above 0 when any pixel is marked
    pooled = cv2.resize(
        marked.view(np.uint8).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA
    )
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate((pooled > 0).view(np.uint8), cross, iterations=REACH).astype(bool)


def _flat_colour(chans: list[np.ndarray]) -> np.ndarray:
    """Strong colour exactly flat over 3x3 pixels: drawn labels, arrows and frames in any
    colour (gold, a dark red, a mid green). Microscope pictures hold under 0.01 % of it (450
    real pictures of the three data sets), the labels of a reviewer's figures 0.2-1.7 %."""
    import cv2

    u8 = [np.clip(c * 255.0 + 0.5, 0, 255).astype(np.uint8) for c in chans]
    k = np.ones((3, 3), np.uint8)
    flat = np.logical_and.reduce([cv2.dilate(c, k) == cv2.erode(c, k) for c in u8])
    top = np.maximum(np.maximum(u8[0], u8[1]), u8[2]).astype(np.int16)
    bottom = np.minimum(np.minimum(u8[0], u8[1]), u8[2]).astype(np.int16)
    return flat & (top - bottom >= COLOURFUL)


def _thin_colour(chans: list[np.ndarray]) -> np.ndarray:
    """Thin strokes of strong colour: type and ticks drawn in a colour and antialiased (or
    blurred by JPEG), not flat. Components of strongly coloured pixels every pixel of which is
    within ``THIN`` pixels of weakly coloured ones (a stroke at most twice that wide)."""
    import cv2

    u8 = [np.clip(c * 255.0 + 0.5, 0, 255).astype(np.uint8) for c in chans]
    top = np.maximum(np.maximum(u8[0], u8[1]), u8[2]).astype(np.int16)
    spread = top - np.minimum(np.minimum(u8[0], u8[1]), u8[2])
    strong = (spread >= COLOURFUL).view(np.uint8)
    if not strong.any():
        return strong.astype(bool)
    depth = cv2.distanceTransform((spread >= COLOURFUL // 2).view(np.uint8), cv2.DIST_L2, 3)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
    deepest = np.zeros(n, np.float32)
    on = strong.view(bool)
    np.maximum.at(deepest, labels[on], depth[on])
    keep = (deepest <= THIN) & (stats[:, cv2.CC_STAT_AREA] >= THIN_MIN_AREA)
    keep[0] = False
    return keep[labels]


def _colour_bar(chans: list[np.ndarray]) -> np.ndarray:
    """Colour bars (a legend's gradient): coloured pixels whose colour is constant across the
    bar (``BAR_RUN`` pixels) and changes along it, over ``BAR_LENGTH`` pixels in a row. Flat
    one way only, they escape ``_flat_colour``; lined up in two figures of one template, their
    edges carried a match of unrelated figures."""
    import cv2

    h, w = chans[0].shape
    step = -(-max(h, w) // BAR_SIDE)  # every step-th pixel: a flat run stays flat
    u8 = np.stack([c[::step, ::step] for c in chans], axis=-1)
    u8 = np.clip(u8 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    coloured = u8.max(-1).astype(np.int16) - u8.min(-1) >= COLOURFUL // 2
    out = np.zeros(coloured.shape, dtype=bool)
    if not coloured.any():
        return np.zeros((h, w), dtype=bool)

    def spread(k: np.ndarray) -> np.ndarray:  # the largest channel range over kernel ``k``
        return (cv2.dilate(u8, k).astype(np.int16) - cv2.erode(u8, k)).max(-1)

    for across, along in (((1, BAR_RUN), (BAR_LENGTH, 1)), ((BAR_RUN, 1), (1, BAR_LENGTH))):
        k_along = np.ones(along, np.uint8)
        bar = coloured & (spread(np.ones(across, np.uint8)) <= BAR_TOLERANCE)
        bar &= spread(k_along) > 2 * BAR_TOLERANCE
        out |= cv2.morphologyEx(bar.view(np.uint8), cv2.MORPH_OPEN, k_along).astype(bool)
    if step > 1:
        out = cv2.resize(out.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)
