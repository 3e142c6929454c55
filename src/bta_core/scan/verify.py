"""Keypoint verification of each image's best candidates (``bta_core.match``)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..assess import add_match, verification_skipped
from ..imageio import ImageReadError, iter_images, load_image
from ..runtime import ProgressFn, StopFn, check_cancel
from ..verdict import PERCEPTUAL_HASH, Policy, decide
from .evidence import PairKey
from .records import Pair, ScanImage
from .verify_cache import VerifyCache

IMAGES_KEPT = 64
"""Decoded images kept in memory while verifying (pairs are visited image by image)."""


def load_scan_image(item: ScanImage) -> np.ndarray:
    """The full-size float RGB pixels of a scanned image (a file, or one plane of a stack)."""
    if item.name == item.path and item.index == 0:
        return load_image(item.path)
    for info, rgb in iter_images(item.path, split_channels=True):
        if info.name == item.name:
            return rgb
    raise ImageReadError(item.path, f"plane {item.name} not found")


def iter_scan_images(
    items: Sequence[ScanImage],
) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(position, float RGB or None)`` for every item, reading each file once (the planes of
    a stack come from one read); None where the file can no longer be read."""
    by_path: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        by_path.setdefault(it.path, []).append(k)
    for path, ks in by_path.items():
        if len(ks) == 1:
            try:
                yield ks[0], load_scan_image(items[ks[0]])
            except Exception:  # changed or gone since embedding
                yield ks[0], None
            continue
        wanted = {items[k].name: k for k in ks}
        seen: set[int] = set()
        try:
            for info, rgb in iter_images(path, split_channels=True):
                if info.name in wanted:
                    seen.add(wanted[info.name])
                    yield wanted[info.name], rgb
        except Exception:
            pass
        for k in ks:
            if k not in seen:
                yield k, None


def select_for_verification(
    keys: Sequence[PairKey],
    pairs: Sequence[Pair],
    n_images: int,
    per_image: int,
    roles: Sequence[str] | None = None,
    extra: Mapping[PairKey, object] | None = None,
) -> list[int]:
    """Positions of the pairs to check: the ``per_image`` best by model score of every query
    image, among the pairs not already ``same`` by identical pixels or perceptual hash, plus
    the pairs in ``extra`` (each query image's candidates by local-feature votes,
    ``scan.keypoint_votes``) that are not ``same`` already, plus every near copy ``same`` by
    the perceptual hash (its verdict stands; the check locates it and finds local edits, a
    pasted or erased patch, which the hash cannot see).

    The budget counts per query image only (``roles[k] == "query"``; None: all are queries), so
    reference or index images never add checks of their own."""
    if per_image <= 0:
        return []
    is_query = [True] * n_images if roles is None else [r == "query" for r in roles]
    options: list[list[tuple[float, int]]] = [[] for _ in range(n_images)]
    for m, ((i, j), p) in enumerate(zip(keys, pairs, strict=True)):
        if p.same:
            continue
        for k in (i, j):
            if is_query[k]:
                options[k].append((p.score, m))
    chosen: set[int] = {m for m, p in enumerate(pairs) if p.decision.decided_by == PERCEPTUAL_HASH}
    if extra:
        chosen.update(
            m
            for m, (key, p) in enumerate(zip(keys, pairs, strict=True))
            if key in extra and not p.same
        )
    for opts in options:
        opts.sort(key=lambda t: (-t[0], t[1]))
        chosen.update(m for _, m in opts[:per_image])
    return sorted(chosen, key=lambda m: keys[m])


def verify_pairs(
    pairs: list[Pair],
    keys: Sequence[PairKey],
    items: Sequence[ScanImage],
    per_image: int,
    policy: Policy,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    extra: Mapping[PairKey, object] | None = None,
    checks: VerifyCache | None = None,
) -> int:
    """Check each query image's best candidates by keypoint matching and re-decide them in place.

    ``extra``: more pairs to check (``select_for_verification``). A verified overlap makes a pair
    ``same`` whatever its score. ``checks``: results of earlier scans, reused for pairs of the
    same pixels and filled with the new ones. Returns how many were checked (cached included).
    """
    from ..match import match_images
    from ..match.prepare import ImageTooSmallError

    roles = [it.role for it in items]
    todo = select_for_verification(keys, pairs, len(items), per_image, roles, extra)
    cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def image(k: int) -> np.ndarray:
        if k in cache:
            cache.move_to_end(k)
        else:
            cache[k] = load_scan_image(items[k])
            if len(cache) > IMAGES_KEPT:
                cache.popitem(last=False)
        return cache[k]

    for step, m in enumerate(todo, 1):
        check_cancel(should_stop, "scan")
        i, j = keys[m]
        evidence = pairs[m].evidence
        hashes = (items[i].pixel_hash, items[j].pixel_hash)
        try:
            if checks is None or not checks.load(*hashes, evidence):
                found = match_images(image(i), image(j), heatmaps=False, should_stop=should_stop)
                add_match(evidence, found)
                if checks is not None:
                    checks.store(*hashes, evidence)
        except InterruptedError:  # cancelled: stop the scan
            raise
        except Exception as exc:  # changed since embedding, or degenerate pixels: not verified
            evidence.verified = False
            gone = [items[k].path for k in (i, j) if not os.path.exists(items[k].path)]
            if gone:
                evidence.verified = evidence.match_confidence = evidence.inliers = None
                evidence.not_checked = (
                    f"{gone[0]} is missing (moved or deleted since it was embedded or indexed)"
                )
            elif isinstance(exc, ImageReadError):
                evidence.not_checked = f"could not be read again: {exc}"
            elif isinstance(exc, ImageTooSmallError):  # the matcher refused it: as score says
                evidence.verified = evidence.match_confidence = evidence.inliers = None
                evidence.not_checked = verification_skipped(exc, (items[i].name, items[j].name))
        pairs[m].decision = decide(evidence, policy)
        if on_progress is not None:
            on_progress(step, len(todo), {"stage": "verify"})
    return len(todo)
