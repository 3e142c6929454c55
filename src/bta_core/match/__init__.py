"""Locate where two images match and recover the transform from B to A (``bta-core match``).

A score says *that* two images share a source; this package says *where*: "this region of A
is this region of B, rotated by 90 degrees and mirrored" (Bik et al.'s category II reuse).

How (details in docs/match.md): ``prepare`` makes grey, contrast-stretched working copies;
``keypoints`` fits a similarity (or a stretch) to SIFT matches of A with B and mirrored B;
``correlation`` tries B's 8 rotations/flips by masked cross-correlation where keypoints fail;
a candidate is accepted only if the aligned pixels agree (``locate``). ``heatmaps`` gives
per-tile agreement, ``transform`` the geometry, ``render`` the overview PNG.
"""

from .heatmaps import tile_heatmaps, upsample_heatmap
from .locate import MatchResult, match_files, match_images
from .render import render_match_png, summary, warp_b_to_a
from .transform import MatchTransform

__all__ = [
    "MatchResult",
    "MatchTransform",
    "match_files",
    "match_images",
    "render_match_png",
    "summary",
    "tile_heatmaps",
    "upsample_heatmap",
    "warp_b_to_a",
]
