"""Panels repeated inside one figure: every pair of a figure's panels, decided as two files are.

A journal figure that shows one picture twice (as it is, mirrored, turned, cropped, rescaled or
with other contrast) is the commonest reuse an editor meets. ``find_repeated_panels`` cuts the
figure into panels (``panels.find_panels``) and gathers, for every pair of panels, the evidence
a pair of files gets: identical pixels and the perceptual hash under the 8 rotations/flips
(``assess.fingerprint_evidence``), keypoint/correlation verification of one panel against the
other (``locate.match_images``, recorded by ``assess.add_match``) and, when a scorer is given,
a model score. The hash and the match see each panel with its drawn labels (letter boxes,
scale bars, corner letters: ``label_mask``) filled, since every panel of a figure carries them
at the same places. ``verdict.decide`` turns each pair's evidence into its verdict; pairs are
ranked by ``verdict.rank_key``. Boxes are ``(x0, y0, x1, y1)`` figure pixels, x1/y1 exclusive.

Not re-exported by ``bta_core.match`` (it builds on ``assess``, which builds on ``match``):
import it as ``bta_core.match.within``. Torch-free unless the scorer loads a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..assess import add_match, fingerprint_evidence, verification_skipped
from ..dihedral import describe_d4
from ..fingerprint import pixel_hash
from ..imageio import to_float_rgb
from ..runtime import ProgressFn, StopFn, check_cancel
from ..verdict import (
    DIFFERENT,
    IDENTICAL_PIXELS,
    PERCEPTUAL_HASH,
    SUSPECT,
    VERIFIED_OVERLAP,
    Decision,
    Policy,
    decide,
    rank_key,
)
from .edits import LocalEdits
from .graphics import BLACK, NEAR_WHITE, WHITE
from .heatmaps import cell_index
from .locate import MatchResult, match_images
from .panels import find_panels
from .params import EDIT_SMOOTHING, MAX_SIDE
from .prepare import ImageTooSmallError
from .transform import MatchTransform, warp_image

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` figure pixels, x1/y1 exclusive."""
PairScorer = Callable[[np.ndarray, np.ndarray], tuple[float, float | None]]
"""``scorer(panel_a, panel_b) -> (raw model score, calibrated probability or None)``."""

NO_PANELS = (
    "no panels found: no gutters between panels were detected, so nothing was compared "
    "(one picture; or gutters too thin in a JPEG, or broken by letters, to be seen)"
)
MAX_LABELS = 0.2
"""Largest share of a panel taken for labels that is set aside before hashing and matching it:
above it the panel is mostly pure white (a saturated picture), used as it is."""
EDGE = 2
"""Lines along a panel's border whose white is taken for the gutter's (``label_mask``)."""
LABEL_MIN_AREA = 40
"""White components smaller than this many pixels are specks, not labels."""
LABEL_SOLID = 0.9
"""A label is solid: white, holes (its type) filled, over this share of its bounding box."""
CORNER = 0.2
"""White type wholly inside a panel's corners (this share of each side) is a panel letter..."""
CORNER_TYPE = 0.01
"""... when it is a component of at most this share of the panel's pixels."""


@dataclass
class PanelPair:
    """Two panels of one figure, the decision on them and, when verified, how B maps onto A."""

    index_a: int
    index_b: int
    """Indices into ``FigureSearch.panels`` (A comes first in the figure)."""
    panel_a: Box
    panel_b: Box
    decision: Decision
    match: MatchResult | None = None
    """The keypoint/correlation search of panel B against panel A (panel pixels); None when it
    did not run (identical pixels, or a panel too small to match)."""
    region_a: Box | None = None
    """The shared region in figure pixels (A's side); None without a verified overlap."""
    region_b: Box | None = None
    transform: MatchTransform | None = None
    """Figure pixels of panel B -> figure pixels of panel A; None without a verified overlap."""
    note: str | None = None
    """Why verification did not run, else None."""

    @property
    def repeated(self) -> bool:
        """Whether the verdict says this pair is worth showing (``same`` or ``suspect``)."""
        return self.decision.verdict != DIFFERENT

    @property
    def orientation(self) -> str | None:
        """How B looks relative to A (a D4 name): the verified transform's, else the hash's when
        the hash decided, ``identity`` for identical pixels; None when unknown."""
        if self.transform is not None and abs(self.transform.residual_angle) < 1.0:
            return self.transform.dihedral
        if self.decision.decided_by == PERCEPTUAL_HASH:
            return self.decision.hash_orientation
        if self.decision.decided_by == IDENTICAL_PIXELS:
            return "identity"
        return None

    def how(self) -> str:
        """The orientation and scale in words, with the panels' numbers (empty when nothing
        says it)."""
        if self.transform is not None:
            t = self.transform
            return self.named(f"{t.describe()}, scale {t.scale:.2f}")
        return self.named(describe_d4(self.orientation)) if self.orientation else ""

    def named(self, text: str) -> str:
        """``text`` with "B is A" said as "panel 4 is panel 1" (1-based, reading order): "A" and
        "B" would read as the figure's own panel letters."""
        return text.replace("B is A", f"panel {self.index_b + 1} is panel {self.index_a + 1}")

    def explain(self) -> str:
        """The decision's explanation with the panels' numbers, and the scale of a keypoint
        match when the hash decided (a verified overlap says its own)."""
        scale = ""
        if self.transform is not None and self.decision.decided_by != VERIFIED_OVERLAP:
            scale = f" [matched at scale {self.transform.scale:.2f}]"
        return self.named(self.decision.explain()) + scale

    def to_dict(self) -> dict:
        return {
            "panel_a": self.index_a,
            "panel_b": self.index_b,
            "box_a": list(self.panel_a),
            "box_b": list(self.panel_b),
            "region_a": None if self.region_a is None else list(self.region_a),
            "region_b": None if self.region_b is None else list(self.region_b),
            "orientation": self.orientation,
            "transform": None if self.transform is None else self.transform.to_dict(),
            "decision": self.decision.to_dict(),
            "explain": self.decision.explain(),
            "method": None if self.match is None else self.match.method,
            "ncc": None if self.match is None else round(float(self.match.ncc), 4),
            "seconds": None if self.match is None else round(float(self.match.seconds), 3),
            "note": self.note,
        }


@dataclass
class FigureSearch:
    """The panels of one figure and every pair of them, ranked (``verdict.rank_key``)."""

    shape: tuple[int, int]
    panels: list[Box]
    pairs: list[PanelPair] = field(default_factory=list)
    note: str | None = None
    """Why no pair was checked (fewer than two panels), else None."""
    seconds: float = 0.0

    @property
    def repeated(self) -> list[PanelPair]:
        """The pairs that are not ``different``, strongest first."""
        return [p for p in self.pairs if p.repeated]

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "panels": [list(b) for b in self.panels],
            "pairs_checked": len(self.pairs),
            "repeated": [p.to_dict() for p in self.repeated],
            "note": self.note,
            "seconds": round(float(self.seconds), 3),
        }


def _offset(box: tuple[int, int, int, int] | None, dx: int, dy: int) -> Box | None:
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def label_mask(panel: np.ndarray) -> np.ndarray:
    """Pixels of a panel's drawn labels: solid white rectangles (letter boxes, scale bars: with
    their holes filled, over ``LABEL_SOLID`` of their bounding box), small white type in the
    panel's corners (letters), white on its outer lines, and the black type next to them,
    grown by 2 pixels (antialiased edges). Saturated white content elsewhere (the halos of a
    phase-contrast picture, a ring round a disk at most 0.79 of its box; bright specks) is
    kept."""
    import cv2
    from scipy.ndimage import binary_fill_holes

    white = np.logical_and.reduce([panel[..., c] >= WHITE for c in range(panel.shape[-1])])
    if not white.any():
        return white
    dark = panel.max(axis=-1) <= BLACK
    # the panel's outer lines may hold a gutter's last pixels: marked, and kept out of the
    # components (joined to a corner's letter box they would not look solid)
    ring = np.zeros_like(white)
    ring[:EDGE], ring[-EDGE:], ring[:, :EDGE], ring[:, -EDGE:] = True, True, True, True
    inner = (white & ~ring).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inner, connectivity=8)
    keep = np.zeros(n, dtype=bool)
    ph, pw = white.shape
    cx, cy = CORNER * pw, CORNER * ph
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        # white type in a corner: a panel letter (on a dark picture it outweighs the rest)
        in_corner = (x + w <= cx or x >= pw - cx) and (y + h <= cy or y >= ph - cy)
        if in_corner and area <= CORNER_TYPE * ph * pw:
            keep[k] = True
        elif area >= LABEL_MIN_AREA:  # the type inside a letter box is a hole of its white
            keep[k] = binary_fill_holes(labels[y : y + h, x : x + w] == k).mean() >= LABEL_SOLID
    solid = keep[labels] | (white & ring)
    if not solid.any():
        return solid
    square = np.ones((2 * NEAR_WHITE + 1,) * 2, np.uint8)
    near = cv2.dilate(solid.view(np.uint8), square).astype(bool)
    marked = solid | (near & dark)
    return cv2.dilate(marked.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def without_labels(panel: np.ndarray) -> np.ndarray:
    """The panel with its labels (``label_mask``) filled with the median colour of the rest,
    for the perceptual hash: the panels of one figure carry the same letter box and scale bar
    at the same places, which pulls unrelated dark panels' hashes together (two fluorescence
    fields with a white letter box and scale bar: 36 of 256 bits, a `same`)."""
    mask = label_mask(panel)
    if not mask.any() or mask.mean() > MAX_LABELS:
        return panel
    out = panel.copy()
    out[mask] = np.median(panel[~mask], axis=0)
    return out


def edits_off_labels(found: MatchResult, a: np.ndarray, b: np.ndarray) -> LocalEdits | None:
    """``found.local_edits`` without the cells on either panel's labels (B's mapped into A):
    two copies of one picture in a figure carry different letters, which is no retouching."""
    import cv2

    edits = found.local_edits
    if edits is None or not edits.cells or found.transform is None:
        return edits
    labels = label_mask(a)
    on_b = label_mask(b)
    if on_b.any():
        warped, valid = warp_image(on_b, found.transform.inverse, a.shape[:2], order=0)
        labels |= (warped > 0) & valid
    if not labels.any():
        return edits
    reach = 2 * int(np.ceil(3 * max(1.0, min(a.shape[:2]) * EDIT_SMOOTHING))) + 1
    labels = cv2.dilate(labels.view(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    touched = set(np.unique(cell_index(a.shape[:2], edits.grid_shape)[labels]).tolist())
    kept = tuple(c for c in edits.cells if c[0] * edits.grid_shape[1] + c[1] not in touched)
    return replace(edits, cells=kept, box_a=edits.box_a if kept else None)


def check_pair(
    figure: np.ndarray,
    boxes: tuple[Box, Box],
    *,
    scorer: PairScorer | None = None,
    policy: Policy | None = None,
    max_side: int = MAX_SIDE,
    should_stop: StopFn | None = None,
) -> PanelPair:
    """The evidence on two panels of ``figure`` (float RGB) and their decision (indices left 0)."""
    box_a, box_b = boxes
    a, b = _crop(figure, box_a), _crop(figure, box_b)
    # hashed and matched with their labels set aside; identical as they are
    a_bare, b_bare = without_labels(a), without_labels(b)
    evidence = fingerprint_evidence(a_bare, b_bare)
    evidence.identical_pixels = pixel_hash(a) == pixel_hash(b)
    if scorer is not None:
        evidence.model_score, evidence.model_probability = scorer(a, b)
    found = note = region_a = region_b = transform = None
    if not evidence.identical_pixels:
        check_cancel(should_stop, "figure search")
        try:
            found = match_images(
                a_bare, b_bare, max_side=max_side, heatmaps=False, should_stop=should_stop
            )
        except ImageTooSmallError as exc:
            note = verification_skipped(exc, ("panel A", "panel B"))
        else:
            found.local_edits = edits_off_labels(found, a, b)
            add_match(evidence, found)
            if found.found:
                ax, ay, bx, by = box_a[0], box_a[1], box_b[0], box_b[1]
                region_a, region_b = _offset(found.box_a, ax, ay), _offset(found.box_b, bx, by)
                matrix = _shift(ax, ay) @ found.transform.matrix @ _shift(-bx, -by)
                transform = MatchTransform.from_matrix(matrix)
    decision = decide(evidence, policy)
    return PanelPair(0, 0, box_a, box_b, decision, found, region_a, region_b, transform, note)


def find_repeated_panels(
    image: np.ndarray,
    *,
    scorer: PairScorer | None = None,
    policy: Policy | None = None,
    max_side: int = MAX_SIDE,
    panels: list[Box] | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> FigureSearch:
    """Every pair of panels of one figure, decided by ``verdict.decide`` and ranked.

    Args:
        image: the figure, ``(H, W)`` or ``(H, W, 3|4)`` of any numeric type.
        scorer: optional model score of two panels (``PairScorer``); None: no model evidence.
        policy: the decision thresholds (default ``verdict.Policy()``).
        max_side: working size of the keypoint search (``match_images``).
        panels: the panel boxes ``(x0, y0, x1, y1)``; None: ``find_panels`` of the figure.
        on_progress: ``on_progress(done, total, {"stage": "panel pairs"})`` after each pair.
        should_stop: polled between pairs; returning True raises ``InterruptedError``.

    A figure with fewer than two panels gives no pairs and a ``note`` that says why.
    """
    t0 = time.perf_counter()
    figure = to_float_rgb(image, "image")
    shape = (int(figure.shape[0]), int(figure.shape[1]))
    if panels is None:
        panels = [(x0, y0, x1, y1) for y0, y1, x0, x1 in find_panels(figure)]
    panels = [tuple(int(v) for v in box) for box in panels]
    for x0, y0, x1, y1 in panels:
        if not (0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]):
            raise ValueError(f"panel {[x0, y0, x1, y1]} is not inside the {shape} figure")
    if len(panels) < 2:
        note = NO_PANELS if not panels else "one panel only: nothing to compare it with"
        return FigureSearch(shape, panels, [], note, time.perf_counter() - t0)
    todo = [(i, j) for i in range(len(panels)) for j in range(i + 1, len(panels))]
    pairs = []
    for done, (i, j) in enumerate(todo, 1):
        check_cancel(should_stop, "figure search")
        pair = check_pair(
            figure,
            (panels[i], panels[j]),
            scorer=scorer,
            policy=policy,
            max_side=max_side,
            should_stop=should_stop,
        )
        pair.index_a, pair.index_b = i, j
        pairs.append(pair)
        if on_progress is not None:
            on_progress(done, len(todo), {"stage": "panel pairs"})
    pairs.sort(key=lambda p: rank_key(p.decision), reverse=True)
    return FigureSearch(shape, panels, pairs, None, time.perf_counter() - t0)


def describe_pair(pair: PanelPair, number: int) -> str:
    """One console line: the number drawn on the figure, both panels (numbered from 1 in
    reading order), the verdict and why (``PanelPair.explain``)."""
    a, b = pair.index_a + 1, pair.index_b + 1
    region = f" (regions {list(pair.region_a)} ~ {list(pair.region_b)})" if pair.region_a else ""
    return (
        f"#{number} panel {a} {list(pair.panel_a)} ~ panel {b} {list(pair.panel_b)}{region}: "
        + (pair.explain())
    )


def describe_counts(search: FigureSearch) -> str:
    """``N panels, M pairs checked, K repeated`` (and how many of those are model-only)."""

    def n(count: int, word: str) -> str:
        return f"{count} {word}" + ("" if count == 1 else "s")

    rep = search.repeated
    line = f"{n(len(search.panels), 'panel')}, {n(len(search.pairs), 'pair')} checked, "
    line += f"{len(rep)} repeated"
    suspect = sum(p.decision.verdict == SUSPECT for p in rep)
    if suspect:
        line += f" ({len(rep) - suspect} same, {suspect} suspect: model score only)"
    return line


PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def render_repeats_png(image: np.ndarray, search: FigureSearch, path: str | Path) -> Path:
    """The figure with each repeated pair boxed in one colour (on the matched regions, else the
    panels), joined by a line and numbered (``#1`` strongest, at each box's bottom left);
    panels found are outlined thin grey. Returns ``path``."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = (np.clip(to_float_rgb(image, "image"), 0, 1) * 255).astype(np.uint8)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(search.shape) / 300))
    size = max(12, round(max(search.shape) / 45))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        font = ImageFont.load_default()
    for x0, y0, x1, y1 in search.panels:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(128, 128, 128), width=1)
    for k, pair in enumerate(search.repeated, 1):
        colour = PALETTE[(k - 1) % len(PALETTE)]
        line = width if pair.decision.is_same else max(1, width // 2)
        boxes = [pair.region_a or pair.panel_a, pair.region_b or pair.panel_b]
        centres = []
        for x0, y0, x1, y1 in boxes:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
            centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
            # bottom left, white on the pair's colour (letters usually sit top left)
            left, top, right, bottom = draw.textbbox((0, 0), f"#{k}", font=font)
            tx, ty = x0 + line + 3, y1 - line - 3 - bottom
            draw.rectangle((tx - 3, ty + top - 3, tx + right + 3, ty + bottom + 3), fill=colour)
            draw.text((tx, ty), f"#{k}", fill=(255, 255, 255), font=font)
        draw.line([*centres[0], *centres[1]], fill=colour, width=line)
    path = Path(path)
    canvas.save(path, format="PNG")
    return path
