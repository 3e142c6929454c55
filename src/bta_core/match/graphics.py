"""Figure graphics: what a figure adds to its pictures (labels, captions, gutters), not content.

Two figures made with one template share their graphics: an "A" in a white box at each panel's
corner, a white gutter, a caption in black type. Those are sharp, high-contrast and identical,
so they line up under the identity and can carry a keypoint match and its pixel agreement
although no picture is shared. Graphics are drawn in pure white, and in pure black on white
(type on a label or caption), in pure colours (yellow letters, red arrows) and in flat black
bands and gutters; microscope pictures rarely are. A saturated fluorescence picture (white
cells on a flat black background) can be marked almost whole: ``panel_search.content_check``
then falls back to the whole overlap. ``graphics_mask`` marks them at the matcher's working
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
REACH = 6
"""Working pixels the mask is grown by: the band-pass (sigma 4) spreads an edge this far."""


def graphics_mask(rgb: np.ndarray, work_shape: tuple[int, ...]) -> np.ndarray:
    """Working-size mask (``work_shape``) of the graphics of ``rgb`` (full size, its own levels
    in 0-1, not contrast-stretched: a stretch saturates the brightest cells too): pure colours
    (every channel at 0 or 1, not black: white, pure red, green, yellow...), strong colours
    flat over 3x3 pixels (``_flat_colour``), black near them, and flat black; a working pixel is marked when any full-size
    pixel under it is."""
    import cv2

    chans = [rgb[..., c] for c in range(rgb.shape[-1])] if rgb.ndim == 3 else [rgb]
    high = [c >= WHITE for c in chans]  # per channel: fast
    low = [c <= BLACK for c in chans]
    pure = np.logical_and.reduce([h | lo for h, lo in zip(high, low, strict=True)])
    pure &= np.logical_or.reduce(high)
    if len(chans) == 3:
        pure |= _flat_colour(chans)
    if not pure.any():
        return np.zeros(work_shape[:2], dtype=bool)
    dark = np.logical_and.reduce(low).view(np.uint8)

    def square(r: int) -> np.ndarray:
        return np.ones((2 * r + 1, 2 * r + 1), np.uint8)

    near = cv2.dilate(pure.view(np.uint8), square(NEAR_WHITE))
    # a figure that has graphics draws its black gutters and bands flat: black whose whole
    # neighbourhood is black (not a dark picture's noisy background, nor its darkest cells)
    flat = cv2.erode(dark, square(FLAT))
    marked = pure | ((dark & near) | cv2.dilate(flat, square(FLAT))).astype(bool)
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
