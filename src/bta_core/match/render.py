"""Showing a match: B warped into A's frame, a one-line summary and the overview PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..dihedral import describe_d4
from .edits import match_levels
from .heatmaps import upsample_heatmap
from .locate import MatchResult
from .prepare import as_float_rgb, fill_of_free_turn, to_grey
from .transform import MatchTransform, map_points, warp_image


def warp_b_to_a(image_b: np.ndarray, result: MatchResult, shape_a: tuple[int, ...]) -> np.ndarray:
    """B resampled into A's pixel frame ``shape_a[:2]`` (float RGB, zeros outside ``mask_a``).

    Raises ``ValueError`` when the result holds no transform.
    """
    if result.transform is None:
        raise ValueError("no match was found, so B cannot be placed in A's frame")
    b = as_float_rgb(image_b, "image_b")
    out, valid = warp_image(b, result.transform.inverse, tuple(shape_a[:2]))
    out[~valid] = 0.0
    return np.clip(out, 0.0, 1.0)


def _px(value: float) -> str:
    """A pixel offset rounded to an integer, never printed as ``-0``."""
    return f"{round(float(value)) + 0:d}"


def summary(result: MatchResult) -> str:
    """One line describing a result, e.g. for titles and terminal output."""
    score = "" if result.score is None else f", model score {result.score:.3f}"
    if result.transform is None:
        return f"no matching region found (confidence {result.confidence:.2f}{score})"
    t = result.transform
    what = t.describe()
    what = "no rotation/flip" if what == describe_d4("identity") else what
    edits = result.local_edits
    differs = ""
    if edits is not None and edits.cells:
        differs = f"; B differs locally in {len(edits.cells)} cell(s) at {list(edits.box_a)} px"
    return (
        f"match: {what}, scale {t.scale:.2f}, shift ({_px(t.translation[0])}, "
        f"{_px(t.translation[1])}) px, {result.inliers} inliers [{result.method}], "
        f"confidence {result.confidence:.2f}{score}{differs}"
    )


def aligned_grey_b(
    ga: np.ndarray, gb: np.ndarray, t: MatchTransform
) -> tuple[np.ndarray, np.ndarray]:
    """B's grey image warped onto A with B's grey levels matched to A's over the overlap, and
    where it is B's content: the filled corners of a panel turned by a free angle are left out
    (each image's own contrast stretch, thrown off by the fill, tinted a true copy)."""
    warped, valid = warp_image(gb, t.inverse, ga.shape[:2])
    fill = fill_of_free_turn(gb, t.matrix, ga.shape, margin=2)
    if fill is not None:
        valid = valid & ~fill[1]
    if valid.sum() >= 64:
        warped = np.clip(match_levels(warped, ga, valid), 0, 1).astype(np.float32)
    return warped, valid


def overlap_agreement(
    result: MatchResult, min_cover: float = 0.25, overlap: np.ndarray | None = None
) -> np.ma.MaskedArray:
    """The alignment heatmap of A as drawn: each cell's agreement over the part of it inside
    the overlap (the heatmap holds agreement x covered fraction), shown only inside the overlap
    and only for cells at least ``min_cover`` covered. A smoothed grid glowed past the overlap
    and faded its edge cells as if they disagreed. ``overlap``: the pixels of A that B's
    content covers (default ``result.mask_a``; without the filled corners of a free turn)."""
    from .heatmaps import cell_index

    mask = result.mask_a if overlap is None else overlap
    gshape = result.heatmap_a.shape
    cells = cell_index(mask.shape, gshape)
    counts = np.bincount(cells.ravel(), minlength=gshape[0] * gshape[1])
    inside = np.bincount(cells.ravel(), weights=mask.ravel(), minlength=counts.size)
    cover = (inside / np.maximum(counts, 1)).reshape(gshape)
    agree = np.where(cover >= min_cover, result.heatmap_a / np.maximum(cover, 1e-6), 0.0)
    heat = upsample_heatmap(np.clip(agree, 0, 1), mask.shape, smooth=False)
    shown = mask & (cover >= min_cover).ravel()[cells]
    return np.ma.masked_where(~shown, heat)


def panel_titles(result: MatchResult) -> tuple[str, str, str]:
    """Titles of the first three panels; they claim a shared region only when one was found."""
    if result.transform is None:
        return (
            "A (no region shared with B found)",
            "B (no region of it found in A)",
            "B warped onto A",
        )
    return ("A: overlap with B", "B: region found in A", "B warped onto A (A magenta, B green)")


def heatmap_title(result: MatchResult) -> str:
    """Title of the heatmap panel: what its values are."""
    if result.heatmap_source == "model":
        return "A: model similarity (P same)"
    if result.heatmap_source == "alignment":
        return "A: pixel agreement with B (aligned)"
    return "A: no heatmap (nothing aligned)"


def render_match_png(
    image_a: np.ndarray,
    image_b: np.ndarray,
    result: MatchResult,
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write a PNG: A with the overlap outlined, B with its matched region, B warped onto A
    (A in magenta, B in green: grey where they agree), and the heatmap over A."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..checkpoint import atomic_write

    a = as_float_rgb(image_a, "image_a")
    b = as_float_rgb(image_b, "image_b")
    fig = Figure(figsize=(16, 4.6), dpi=dpi)
    axes = fig.subplots(1, 4)
    for ax in axes:
        ax.set_axis_off()
    found = result.transform is not None
    titles = panel_titles(result)
    axes[0].imshow(a)
    axes[0].set_title(titles[0])
    axes[1].imshow(b)
    axes[1].set_title(titles[1])
    if found:
        for ax, poly in ((axes[0], result.outline_a()), (axes[1], result.outline_b())):
            closed = np.vstack([poly, poly[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color="#00e5ff", lw=2)
            ax.set_xlim(-0.5, (a if ax is axes[0] else b).shape[1] - 0.5)
            ax.set_ylim((a if ax is axes[0] else b).shape[0] - 0.5, -0.5)
        edits = result.local_edits
        if edits is not None and edits.box_a is not None:  # where B differs locally
            x0, y0, x1, y1 = edits.box_a
            box = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]) - 0.5
            for ax in (axes[0], axes[2]):
                ax.plot(box[:, 0], box[:, 1], color="#ff2d2d", lw=2)
            in_b = map_points(result.transform.inverse, box + 0.5) - 0.5  # the place in B
            axes[1].plot(in_b[:, 0], in_b[:, 1], color="#ff2d2d", lw=2)
        if len(result.points_a):
            axes[0].scatter(*result.points_a.T, s=8, c="#ffd400", edgecolors="k", linewidths=0.3)
            axes[1].scatter(*result.points_b.T, s=8, c="#ffd400", edgecolors="k", linewidths=0.3)
        ga = to_grey(a)
        gb, valid = aligned_grey_b(ga, to_grey(b), result.transform)
        content = valid.copy()
        gb[~valid] = 0
        overlay = np.stack([ga, gb, ga], axis=-1)
        axes[2].imshow(overlay)
        poly = result.outline_a()
        closed = np.vstack([poly, poly[:1]])
        axes[2].plot(closed[:, 0], closed[:, 1], color="#00e5ff", lw=1.5)
        axes[2].set_xlim(-0.5, a.shape[1] - 0.5)
        axes[2].set_ylim(a.shape[0] - 0.5, -0.5)
        axes[2].set_title(titles[2])
    else:
        axes[2].imshow(np.zeros_like(a))
        axes[2].text(
            0.5, 0.5, "no region found", color="w", ha="center", transform=axes[2].transAxes
        )
        axes[2].set_title(titles[2])
    axes[3].imshow(to_grey(a), cmap="gray")
    if result.heatmap_source == "alignment":
        heat = overlap_agreement(result, overlap=content if found else None)
    else:
        heat = upsample_heatmap(result.heatmap_a, a.shape, smooth=True)
    im = axes[3].imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    axes[3].set_title(heatmap_title(result))
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.02)
    fig.suptitle(title or summary(result), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
