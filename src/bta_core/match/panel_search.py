"""The panels of composite figures, matched one by one (``locate.match_images``' fallback).

When two whole images do not match, each panel of B (``panels.find_panels``), then each panel
of A, is searched against the other whole image with its own grey stretch, keypoints and
correlation. A panel's match must cover most of the panel (``PANEL_MIN_COVER``); it is moved
into the whole figures' frame, and its masks and local edits are kept to the panel. A match of
two whole figures must also hold on their panels' pixels (``content_check``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion

from .edits import LocalEdits, local_edits
from .graphics import WHITE, graphics_masks
from .keypoints import Candidate, check_alignment, coarse_agreement
from .panels import Box
from .params import EXACT_NCC
from .prepare import common_scale, pixel_ncc, to_grey
from .transform import image_corners, map_points, polygon_mask, warp_image

EDGE_MARGIN = 12
"""Working pixels inside a panel's border left out of the content check (the band-pass's
sigma-4 blur carries a gutter's edge about this far)."""
CONTENT_NCC = 0.5
"""Pixel agreement (band-passed correlation) a whole-image match must keep on the content left
once panel borders and graphics are set aside (a re-saved figure keeps 0.9, unrelated figures
of one template 0.42 at most in the figure pairs of docs/match.md) ..."""
CONTENT_MIN_PIXELS = 256
"""Working pixels of the overlap that graphics must leave for the check to set them aside (a
saturated fluorescence picture, white specks on flat black, can be marked whole) ..."""
CONTENT_LARGE_OVERLAP = 0.25
"""... when the overlap covers this share of both images (a strip of caption type, mirrored
onto another figure's, is all graphics and never falls back to itself)."""
CONTENT_KEEP = 0.85
"""... unless it keeps this share of the whole overlap's agreement: a blurred copy of a
picture with a few saturated (white) specks agrees 0.47 with or without them."""
CELL = 32
"""Side (working pixels) of the cells over which a content check's agreement must spread ..."""
CELL_DETAIL = 0.002
"""... counting cells whose band-passed pixels vary this much in both images ..."""
CELLS_MIN = 5
CELLS_AGREE = 0.25
"""... when at least ``CELLS_MIN`` do, their median correlation must reach this (copies and
reused panels 0.86-1.0; unrelated figures of one template, lined up on colour bars, labels and
ticks, -0.03-0.14 in the figure pairs of docs/match.md)."""
PANEL_MIN_COVER = 0.5
"""A panel's match must cover at least this share of the panel: a reused panel is copied
mostly whole, while a panel letter or label box shared with the other figure covers a sliver."""
PANEL_WHITE_SHARE = 0.2
"""A panel's grey is stretched off its white pixels unless they are more than this share of it
(a bright-field picture's own white background)."""
LABEL_BOX_SIDE = 12
LABEL_BOX_FILL = 0.95
LABEL_BOX_MAX_SHARE = 0.1
"""A white component is a label box when it is at least ``LABEL_BOX_SIDE`` pixels a side, at
most this share of the panel, and its holes filled cover ``LABEL_BOX_FILL`` of its bounding
box (a rectangle)."""
PANEL_MIN_SPREAD = 0.2
"""The keypoints a panel's match rests on must span this share of the panel (their bounding
box): a panel letter ("A" in the same corner of two unrelated figures) gathers them in one spot."""


def panel_corners(box: list[int] | tuple[int, ...]) -> np.ndarray:
    """Outer pixel-edge corners ``(4, 2)`` of a panel box ``(x0, y0, x1, y1)``, as ``(x, y)``."""
    x0, y0, x1, y1 = box
    return image_corners((y1 - y0, x1 - x0)) + np.array([x0, y0], dtype=float)


def _covers_the_panel(c: Candidate, side: str, panel_shape: tuple[int, ...]) -> bool:
    """Whether a panel's accepted candidate is the panel, not a label on it: the overlap covers
    most of the panel, and its keypoints spread over it (a correlation match without keypoints
    must be a near-exact copy)."""
    cover = c.overlap_b if side == "b" else c.overlap_a
    if cover < PANEL_MIN_COVER:
        return False
    pts = c.pts_b if side == "b" else c.pts_a
    if c.method != "keypoints" or len(pts) < 3:
        return c.ncc >= EXACT_NCC
    span = np.ptp(pts, axis=0)
    return float(span[0] * span[1]) >= PANEL_MIN_SPREAD * panel_shape[0] * panel_shape[1]


def panel_overlap(
    levels_a: np.ndarray, levels_b: np.ndarray, m_full: np.ndarray, panel: dict, grid: int
) -> tuple[LocalEdits | None, np.ndarray, np.ndarray]:
    """Local edits and masks of a match found for one panel (``panel``: its image and box),
    kept to that panel so the rest of its figure counts nowhere. The edits are those of the
    whole aligned figures, on their grid (a panel's own finer grid flagged its letter box),
    with only the cells on the panel kept."""
    x0, y0, x1, y1 = panel["box"]
    inv = np.linalg.inv
    corners = panel_corners(panel["box"])  # full-size pixels of its image
    scaled = common_scale(levels_a, levels_b)
    if panel["image"] == "b":
        inside_b = np.zeros(levels_b.shape[:2], dtype=bool)
        inside_b[y0:y1, x0:x1] = True
        in_a = map_points(m_full, corners)
        mask_a = polygon_mask(levels_a.shape, in_a)
        mask_b = polygon_mask(
            levels_b.shape, map_points(inv(m_full), image_corners(levels_a.shape))
        )
        region = (*in_a.min(0), *in_a.max(0))
        edits = local_edits(scaled, m_full, grid, mask_a)
        return _edits_within(edits, levels_a.shape, region), mask_a, mask_b & inside_b
    inside_a = np.zeros(levels_a.shape[:2], dtype=bool)
    inside_a[y0:y1, x0:x1] = True
    mask_a = polygon_mask(levels_a.shape, map_points(m_full, image_corners(levels_b.shape)))
    mask_b = polygon_mask(levels_b.shape, map_points(inv(m_full), corners))
    edits = local_edits(scaled, m_full, grid, inside_a)
    return _edits_within(edits, levels_a.shape, (x0, y0, x1, y1)), mask_a & inside_a, mask_b


def _edits_within(
    edits: LocalEdits | None, shape_a: tuple[int, ...], region: tuple[float, ...]
) -> LocalEdits | None:
    """``edits`` with only the cells whose centre lies in ``region`` (``x0, y0, x1, y1`` pixels
    of A), and their box cut to it."""
    from dataclasses import replace

    if edits is None or not edits.cells:
        return edits
    h, w = shape_a[:2]
    gh, gw = edits.grid_shape
    rx0, ry0, rx1, ry1 = region
    kept = tuple(
        (r, c)
        for r, c in edits.cells
        if rx0 <= (c + 0.5) * w / gw <= rx1 and ry0 <= (r + 0.5) * h / gh <= ry1
    )
    box = None
    if kept and edits.box_a is not None:
        bx0, by0, bx1, by1 = edits.box_a
        box = (
            int(max(bx0, np.floor(rx0))),
            int(max(by0, np.floor(ry0))),
            int(min(bx1, np.ceil(rx1))),
            int(min(by1, np.ceil(ry1))),
        )
    return replace(edits, cells=kept, box_a=box)


def _offset(x0: int, y0: int) -> np.ndarray:
    """Full image -> panel pixel coordinates for a panel whose corner is ``(x0, y0)``."""
    return np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])


def panel_grey(rgb: np.ndarray) -> np.ndarray:
    """Grey of one panel, stretched to its picture's levels (``prepare.to_grey``'s percentiles
    taken off its white: a letter box in the corner of a dark fluorescence panel set the top
    level, leaving the nuclei too dim for keypoints), with its white label boxes filled with
    the picture's median (``label_boxes``): one panel mirrored onto its copy in another figure
    put one box on the other's picture, and in a dark panel the boxes outweighed the nuclei."""
    g = np.clip(to_grey(rgb, clip=False), 0, 1)
    white = np.all(rgb >= WHITE, axis=-1) if rgb.ndim == 3 else rgb >= WHITE
    if white.mean() > PANEL_WHITE_SHARE or not white.any():
        return g
    boxes = label_boxes(white)
    lo, hi = np.percentile(g[~white], (0.5, 99.5))
    if hi - lo >= 1e-6:
        g = np.clip((g - lo) / (hi - lo), 0, 1).astype(np.float32)
    if boxes.any():
        g[boxes] = np.median(g[~boxes & ~white])
    return g


def label_boxes(white: np.ndarray) -> np.ndarray:
    """The white label boxes of a panel (``white``: its pure white pixels): white components
    that are filled rectangles once their holes (the letter) are filled, at least
    ``LABEL_BOX_SIDE`` pixels a side, grown by a pixel (their antialiased border). Saturated
    specks of a fluorescence picture are round or ragged."""
    import cv2
    from scipy.ndimage import binary_fill_holes

    out = np.zeros(white.shape, dtype=bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(white.view(np.uint8), connectivity=8)
    for k in range(1, n):
        x, y, w, h, _ = stats[k]
        if min(w, h) < LABEL_BOX_SIDE or w * h > LABEL_BOX_MAX_SHARE * white.size:
            continue  # a speck, or a white frame around the picture
        filled = binary_fill_holes(labels[y : y + h, x : x + w] == k)
        if filled.mean() >= LABEL_BOX_FILL:
            out[y : y + h, x : x + w] |= filled
    if out.any():
        out = cv2.dilate(out.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return out


def panel_greys(rgb: np.ndarray, grey: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """The whole ``grey`` of a figure with each of its panels (``boxes``) stretched on its own
    (``panel_grey``: a dark panel in a figure of bright ones keeps its keypoints) and its
    gutters and margins taking the nearest panel pixel's level: a white gutter blurred into a
    panel's border outweighed a phase picture's coarse detail, which a panel searched on its own
    (cut at its border) does not have."""
    from scipy.ndimage import distance_transform_edt

    if not boxes:
        return grey
    out = grey.copy()
    outside = np.ones(grey.shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        out[y0:y1, x0:x1] = panel_grey(rgb[y0:y1, x0:x1])
        outside[y0:y1, x0:x1] = False
    iy, ix = distance_transform_edt(outside, return_distances=False, return_indices=True)
    return out[iy, ix]


def search_panels(
    images: tuple[np.ndarray, np.ndarray],
    greys: tuple[np.ndarray, np.ndarray],
    panels: tuple[list[Box], list[Box]],
    whole: Any,
    search: Callable[[np.ndarray, np.ndarray], Any],
    accept: Callable[[Candidate], bool],
) -> tuple[Candidate, dict] | None:
    """Each panel of a composite figure (``panels``: A's and B's, from ``find_panels``; B's
    tried first) against the other image as a whole (``images``: A and B as float RGB;
    ``greys``: their whole working greys). The best accepted candidate that also holds off the
    graphics (``content_check``), moved into the whole images' working frame (``whole``), and
    the panel ``{"image": "a"|"b", "box": [x0, y0, x1, y1]}``."""
    best: tuple[Candidate, dict] | None = None
    inv = np.linalg.inv
    for side, image, whole_image, other, boxes in (
        ("b", images[1], images[0], panel_greys(images[0], greys[0], panels[0]), panels[1]),
        ("a", images[0], images[1], panel_greys(images[1], greys[1], panels[1]), panels[0]),
    ):
        drawn_other = None  # the other image's graphics, at the working size of its search
        for y0, y1, x0, x1 in boxes:
            crop = image[y0:y1, x0:x1]
            grey = panel_grey(crop)  # its own stretch
            pair = (other, grey) if side == "b" else (grey, other)
            s = search(*pair)
            if s.best is None:
                continue
            work_crop, work_other = (s.work_b, s.work_a) if side == "b" else (s.work_a, s.work_b)
            if drawn_other is None or drawn_other[0].shape != work_other[:2]:
                drawn_other = graphics_masks(whole_image, work_other)
            drawn = (drawn_other, graphics_masks(crop, work_crop))
            drawn = drawn if side == "b" else drawn[::-1]
            # the first accepted candidate that is the panel and not its label (a letter box
            # lined up with the other figure's can come first)
            c = next(
                (
                    c
                    for c in [s.best, *(c for c in s.cands if c is not s.best and accept(c))]
                    if _covers_the_panel(c, side, work_crop)
                    and content_check(c, ([], []), drawn, s, accept)[0]
                ),
                None,
            )
            if c is None:
                continue
            if best is not None and c.ncc <= best[0].ncc:
                continue
            t = _offset(x0, y0)
            if side == "b":  # panel-working B -> whole-working B: back through the offset
                into_a, into_b = whole.to_a @ inv(s.to_a), whole.to_b @ inv(t) @ inv(s.to_b)
            else:
                into_a, into_b = whole.to_a @ inv(t) @ inv(s.to_a), whole.to_b @ inv(s.to_b)
            c.matrix = into_a @ c.matrix @ inv(into_b)
            c.pts_a = map_points(into_a, c.pts_a) if len(c.pts_a) else c.pts_a
            c.pts_b = map_points(into_b, c.pts_b) if len(c.pts_b) else c.pts_b
            best = (c, {"image": side, "box": [x0, y0, x1, y1]})
    return best


def holding_candidate(
    found: Any,
    panels: tuple[list[Box], list[Box]],
    images: tuple[np.ndarray, np.ndarray],
    accept: Callable[[Candidate], bool],
) -> tuple[Candidate | None, dict | None]:
    """The first accepted candidate of a whole-image search (``found``: its best, then its
    other keypoint candidates) that holds on content (``content_check``), and the one panel it
    holds on, if so; ``(None, None)`` when none does (figures aligned on their gutters and
    labels: their panels are then tried one by one). ``images``: A and B as float RGB."""
    graphics = (graphics_masks(images[0], found.work_a), graphics_masks(images[1], found.work_b))
    first = found.best
    for cand in [first, *(c for c in found.cands if c is not first and accept(c))]:
        holds, shared = content_check(cand, panels, graphics, found, accept)
        if holds:
            return cand, shared
    return None, None


def content_check(
    cand: Candidate,
    panels: tuple[list[Box], list[Box]],
    graphics: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    found: Any,
    accept: Callable[[Candidate], bool],
) -> tuple[bool, dict | None]:
    """Whether a whole-image match (``cand``, of the search ``found``) still holds on the
    pictures' content, and the one panel it holds on when two figures share only that one.

    Two figures made alike (panels of one size, a label in each panel's corner, one caption)
    line up their gutters, labels and type under the identity, and those sharp edges can carry
    a whole match although no picture is shared. The candidate is checked again on A's pixels
    that are inside panels (A's, and B's mapped into A, each kept ``EDGE_MARGIN`` off its
    border) and off both images' graphics (``graphics``: ``graphics.graphics_mask`` of A and B
    at working size), then panel by panel: when one panel of several agrees, the match is that
    panel's (``{"image", "box"}``), so its masks and local edits leave the other panels out.
    When graphics would leave fewer than ``CONTENT_MIN_PIXELS`` of an overlap that covers a
    quarter of both images (a saturated fluorescence picture: white specks on flat black),
    they are not set aside, unless the images are figures (``panels``): then, as for a
    smaller overlap (a panel against a figure), their flat black is kept (dark fluorescence
    panels beside white letter boxes: their backgrounds are as flat as a gutter). A match on images without panels or graphics is kept as it is:
    ``(True, None)``. ``panels``: A's and B's (``find_panels``)."""
    panels_a, panels_b = panels
    ha, hb = found.bandpassed
    to_b = np.linalg.inv(cand.matrix)  # working A -> working B
    valid = warp_image(np.ones(hb.shape, np.float32), to_b, ha.shape)[1]  # B's footprint in A

    def union(k: int) -> np.ndarray:  # A's graphics and B's mapped into A
        both = graphics[0][k].copy()
        if graphics[1][k].any():
            both |= (
                warp_image(graphics[1][k].astype(np.float32), to_b, ha.shape)[0] >= 0.5
            ) & valid
        return both

    drawn, marked = union(0), union(1)
    if not panels_a and not panels_b and not (marked & valid).any():
        return True, None
    to_a_work = cand.matrix @ found.to_b  # full-size B -> working A

    def inside(box: Box, to_work: np.ndarray) -> np.ndarray:
        # off the panel's border too: the band-pass spreads a gutter's edge this far inside
        return binary_erosion(_polygon_of(box, to_work, ha.shape), iterations=EDGE_MARGIN)

    masks_a = [inside(box, found.to_a) for box in panels_a]
    masks_b = [inside(box, to_a_work) for box in panels_b]
    region = np.ones(ha.shape, dtype=bool)
    for masks in (masks_a, masks_b):
        if masks:
            region &= np.logical_or.reduce(masks)
    large = min(cand.overlap_a, cand.overlap_b) >= CONTENT_LARGE_OVERLAP
    if (region & valid & ~marked).sum() >= CONTENT_MIN_PIXELS:
        region &= ~marked
    elif (panels_a or panels_b or not large) and (
        region & valid & ~drawn
    ).sum() >= CONTENT_MIN_PIXELS:
        # flat black took the rest: a figure's dark panels, their backgrounds beside their
        # letter boxes (or a dark panel matched on its own), not a lone saturated picture
        region &= ~drawn
    elif not large:
        region &= ~marked

    hb_in_a = warp_image(hb, to_b, ha.shape)[0]

    def holds(part: np.ndarray) -> bool:
        if part.sum() < 64:
            return False
        check = Candidate(cand.matrix, cand.method, cand.inliers, cand.matches)
        check.pts_a, check.pts_b = cand.pts_a, cand.pts_b
        check.margin, check.coincidences, check.chance = cand.margin, cand.coincidences, cand.chance
        check.overlap_a, check.overlap_b = cand.overlap_a, cand.overlap_b  # of the whole ...
        check_alignment(ha, hb, check, part)  # ... and the agreement of these pixels
        coarse_agreement(*found.lowpassed, check, part)

        # enough agreement left, or as much as the whole overlap had: graphics did not carry it
        agree = check.ncc >= min(CONTENT_NCC, CONTENT_KEEP * cand.ncc) and accept(check)
        return agree and _cells_agree(ha, hb_in_a, part)

    whole = holds(region)
    side, boxes, masks = ("a", panels_a, masks_a) if len(panels_a) > 1 else ("b", panels_b, masks_b)
    if len(boxes) >= 2:  # one panel agreeing while the others differ: that panel is the match
        agree = [k for k, m in enumerate(masks) if holds(m & region)]
        if len(agree) == 1:
            y0, y1, x0, x1 = boxes[agree[0]]
            return True, {"image": side, "box": [x0, y0, x1, y1]}
    return whole, None


def _cells_agree(ha: np.ndarray, hb: np.ndarray, part: np.ndarray) -> bool:
    """Whether the agreement of ``part`` is spread over it: the median correlation of its
    ``CELL``-pixel cells with detail in both band-passed images (``hb`` warped into A) is at
    least ``CELLS_AGREE`` (when ``CELLS_MIN`` have detail). Two figures of one template agreed
    on their colour bars' edges while every cell of their pictures differed."""
    agreement = []
    h, w = ha.shape
    for y in range(0, h - CELL // 2, CELL):
        for x in range(0, w - CELL // 2, CELL):
            inside = part[y : y + CELL, x : x + CELL]
            if inside.mean() < 0.5:
                continue
            a, b = ha[y : y + CELL, x : x + CELL][inside], hb[y : y + CELL, x : x + CELL][inside]
            if min(a.std(), b.std()) >= CELL_DETAIL:
                agreement.append(pixel_ncc(a, b))
    return len(agreement) < CELLS_MIN or float(np.median(agreement)) >= CELLS_AGREE


def _polygon_of(box: Box, to_work: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Working-size mask of a full-size panel box ``(y0, y1, x0, x1)`` mapped by ``to_work``."""
    y0, y1, x0, x1 = box
    return polygon_mask(shape, map_points(to_work, panel_corners((x0, y0, x1, y1))))
