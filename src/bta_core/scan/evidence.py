"""The evidence cascade of a scan, gathered in batches for many pairs at once.

(a) identical decoded pixels: images grouped by their pixel hash; (b) near-exact copies: the
perceptual hash of every query against every image in its 8 rotations/flips, pairs within
``Policy.phash_max_distance``; (c) the model's score (``candidates``); (d) keypoint
verification (``verify``). ``bta_core.verdict.decide`` turns each pair's evidence into its
verdict: the scan never applies a threshold rule of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..dihedral import D4_NAMES
from ..fingerprint import pairs_phash, phash_distances
from ..runtime import ProgressFn, StopFn, check_cancel
from ..verdict import Evidence
from .records import ScanImage

PairKey = tuple[int, int]
"""Indices ``(i, j)`` of a pair's images in the scan's item list, ``i < j``."""

_BLOCK_BYTES = 1 << 24
"""Memory bound of one block of hash comparisons."""


def file_numbers(items: Sequence[ScanImage]) -> list[int]:
    """One number per image, equal for the planes/channels of one file (``--planes``)."""
    numbers: dict[str, int] = {}
    return [numbers.setdefault(it.path, len(numbers)) for it in items]


def pair_counts(
    roles: Sequence[str], i: int, j: int, within: bool, files: Sequence[int] | None = None
) -> bool:
    """Whether the scan pairs images ``i`` and ``j``: query x reference always, query x query
    with ``within``, reference x reference never; and, when ``files`` (``file_numbers``) is
    given, never two planes of one file (the frames of a stack look alike by nature)."""
    if files is not None and files[i] == files[j]:
        return False
    qi, qj = roles[i] == "query", roles[j] == "query"
    return (qi and qj and within) or (qi != qj)


def identical_pixel_pairs(
    items: Sequence[ScanImage], within: bool, files: Sequence[int] | None = None
) -> set[PairKey]:
    """Pairs whose decoded pixels are identical (same pixel hash)."""
    groups: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        if it.pixel_hash:
            groups.setdefault(it.pixel_hash, []).append(k)
    roles = [it.role for it in items]
    out: set[PairKey] = set()
    for members in groups.values():
        for a, i in enumerate(members):
            for j in members[a + 1 :]:
                if pair_counts(roles, i, j, within, files):
                    out.add((min(i, j), max(i, j)))
    return out


def near_copy_pairs(
    phash: np.ndarray,
    roles: Sequence[str],
    max_distance: int,
    within: bool,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    files: Sequence[int] | None = None,
) -> set[PairKey]:
    """Pairs with a perceptual-hash distance of at most ``max_distance`` under one of the
    8 orientations: every query against every image, in blocks of bounded memory (pairs as
    ``pair_counts`` with ``files``)."""
    n = len(roles)
    queries = np.flatnonzero(np.asarray(roles) == "query")
    if n < 2 or len(queries) == 0:
        return set()
    rows = max(1, _BLOCK_BYTES // max(1, n * phash[0].size))
    out: set[PairKey] = set()
    for start in range(0, len(queries), rows):
        check_cancel(should_stop, "scan")
        block = queries[start : start + rows]
        dist, _ = phash_distances(phash[block], phash)
        for r, j in zip(*np.nonzero(dist <= max_distance), strict=True):
            i = int(block[r])
            if i != j and pair_counts(roles, i, int(j), within, files):
                out.add((min(i, int(j)), max(i, int(j))))
        if on_progress is not None:
            on_progress(start + len(block), len(queries), {"stage": "hash"})
    return out


def fingerprint_evidence(
    keys: Sequence[PairKey], items: Sequence[ScanImage], phash: np.ndarray
) -> list[Evidence]:
    """Identical-pixel and perceptual-hash evidence of each pair (the same rule as
    ``assess.fingerprint_evidence`` on one pair)."""
    if not keys:
        return []
    ia = np.array([i for i, _ in keys])
    ib = np.array([j for _, j in keys])
    dist, orient = pairs_phash(phash[ia], phash[ib])
    return [
        Evidence(
            identical_pixels=bool(items[i].pixel_hash)
            and items[i].pixel_hash == items[j].pixel_hash,
            phash_distance=int(d),
            phash_orientation=D4_NAMES[int(o)],
        )
        for (i, j), d, o in zip(keys, dist, orient, strict=True)
    ]
