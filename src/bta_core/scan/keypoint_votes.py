"""Candidates by local features: every query image's SIFT descriptors vote for the images
they match, so crops, rotations and heavy edits reach keypoint verification even where the
global embedding ranks the source low.

Each image gives the RootSIFT descriptors of its ``DESCRIPTORS_PER_IMAGE`` strongest keypoints
(on the working copy the matcher uses); a query image also gives those of its mirror image,
which match a flipped copy. A descriptor votes for the image of its nearest descriptor among
the other images when that neighbour passes the ratio test against the nearest one from a
third image. Each query image's ``k`` most voted partners become candidates; the verdict still
comes from the evidence (``bta_core.verdict``), never from the votes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..match.keypoints_cv import strongest_root_sift
from ..match.params import MAX_SIDE
from ..match.prepare import resize_by, to_grey, work_factor
from ..runtime import ProgressFn, StopFn, check_cancel
from .evidence import PairKey, pair_counts
from .records import ScanImage

DESCRIPTORS_PER_IMAGE = 300
RATIO = 0.8
"""Nearest / second-nearest (from another image) distance ratio a vote must pass."""
MIN_VOTES = 2
"""Fewer votes than this never make a candidate (unrelated pairs rarely get 3 or more)."""
NEIGHBOURS = 8
EXACT_MAX = 1_000_000
"""Descriptors searched exactly (about 3,300 images); above, FAISS IVF when installed."""
_BLOCK = 4096


def image_descriptors(rgb: np.ndarray, mirrored: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """RootSIFT descriptors of an image (and of its mirror image when ``mirrored``)."""
    g = to_grey(rgb)
    g, _ = resize_by(g, work_factor(g.shape, MAX_SIDE))
    desc = strongest_root_sift(g, DESCRIPTORS_PER_IMAGE)
    if not mirrored:
        return desc, None
    return desc, strongest_root_sift(np.ascontiguousarray(g[:, ::-1]), DESCRIPTORS_PER_IMAGE)


def nearest(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and indices ``(nq, k)`` of the nearest unit rows of ``base``:
    exact in blocks up to ``EXACT_MAX`` rows, FAISS IVF above (when installed)."""
    k = min(k, len(base))
    if len(base) > EXACT_MAX:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            nlist = int(4 * np.sqrt(len(base)))
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(128), 128, nlist, faiss.METRIC_INNER_PRODUCT
            )
            rng = np.random.default_rng(0)
            index.train(base[rng.choice(len(base), min(len(base), 64 * nlist), replace=False)])
            index.nprobe = 8
            index.add(base)
            sim, idx = index.search(queries, k)
            return np.maximum(2 - 2 * sim, 0), idx.astype(np.int64)
    xb = torch.from_numpy(base)
    dists, idx = [], []
    for start in range(0, len(queries), _BLOCK):
        sim = torch.from_numpy(queries[start : start + _BLOCK]) @ xb.T
        v, i = sim.topk(k, dim=1)
        dists.append((2 - 2 * v).clamp_(min=0).numpy())
        idx.append(i.numpy())
    if not dists:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(dists), np.concatenate(idx)


def ratio_votes(q_owner: np.ndarray, dist: np.ndarray, nn_owner: np.ndarray) -> np.ndarray:
    """``(query image, voted image)`` rows, one per query descriptor whose nearest neighbour
    in another image passes the ratio test against the nearest one from a third image (or,
    with no third image among the neighbours, against the farthest neighbour)."""
    d = np.where(nn_owner == q_owner[:, None], np.inf, dist)  # never the image itself
    rows = np.arange(len(d))
    first = d.argmin(axis=1)
    d0, o0 = d[rows, first], nn_owner[rows, first]
    others = np.where(nn_owner == o0[:, None], np.inf, d)
    second = others.min(axis=1)
    finite = np.where(np.isfinite(d), d, -np.inf).max(axis=1)
    second = np.where(np.isfinite(second), second, finite)
    ok = np.isfinite(d0) & (d0 < RATIO * RATIO * second)
    return np.c_[q_owner[ok], o0[ok]].astype(np.int64)


def keypoint_candidates(
    items: Sequence[ScanImage],
    within: bool,
    k: int,
    load: Callable[[ScanImage], np.ndarray],
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[PairKey, int]:
    """The ``k`` most voted partners of every query image, as ``{(i, j): votes}`` (``i < j``,
    only pairs the scan counts, at least ``MIN_VOTES``). Unreadable images give no votes."""
    roles = [it.role for it in items]
    if k <= 0 or not any(r == "query" for r in roles) or len(items) < 2:
        return {}
    base, owner, queries, q_owner = [], [], [], []
    for n, it in enumerate(items):
        check_cancel(should_stop, "scan")
        try:
            desc, mirror = image_descriptors(load(it), it.role == "query")
        except Exception:  # unreadable since embedding: verification will say so
            desc, mirror = np.zeros((0, 128), np.float32), None
        if within or it.role != "query":  # a cross-only scan votes for references only
            base.append(desc)
            owner += [n] * len(desc)
        if mirror is not None:
            for d in (desc, mirror):
                queries.append(d)
                q_owner += [n] * len(d)
        if on_progress is not None:
            on_progress(n + 1, len(items), {"stage": "keypoints"})
    if not owner or not q_owner:
        return {}
    owner_a, q_owner_a = np.asarray(owner), np.asarray(q_owner)
    dist, idx = nearest(np.concatenate(queries), np.concatenate(base), NEIGHBOURS)
    check_cancel(should_stop, "scan")
    rows = ratio_votes(q_owner_a, dist, owner_a[idx])
    pairs, counts = np.unique(rows, axis=0, return_counts=True)
    votes: dict[PairKey, int] = {}
    for (i, j), c in zip(pairs.tolist(), counts.tolist(), strict=True):
        if pair_counts(roles, i, j, within):
            key = (min(i, j), max(i, j))
            votes[key] = votes.get(key, 0) + c  # both directions add up
    best: dict[int, list[tuple[int, PairKey]]] = {}
    for key, c in votes.items():
        for n in key:
            if roles[n] == "query" and c >= MIN_VOTES:
                best.setdefault(n, []).append((c, key))
    out: dict[PairKey, int] = {}
    for opts in best.values():
        opts.sort(key=lambda t: (-t[0], t[1]))
        out.update((key, c) for c, key in opts[:k])
    return out
