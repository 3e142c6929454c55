"""Candidates by local features: every query image's SIFT descriptors vote for the images
they match, so crops, rotations and heavy edits reach keypoint verification even where the
global embedding ranks the source low.

Each image gives the RootSIFT descriptors of its ``DESCRIPTORS_PER_IMAGE`` strongest keypoints
(on the working copy the matcher uses); a query image also gives those of its mirror image,
which match a flipped copy. A descriptor votes for every other image holding one of its nearest
descriptors when that neighbour is clearly closer than the farthest of them (a ratio test
against the background; an image reused several times gets votes from each copy). Each query
image's ``k`` most voted partners become candidates; the verdict still
comes from the evidence (``bta_core.verdict``), never from the votes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ..match.keypoints_cv import strongest_root_sift
from ..match.panels import find_panels
from ..match.params import MAX_SIDE
from ..match.prepare import resize_by, to_grey, work_factor
from ..runtime import ProgressFn, StopFn, check_cancel
from .evidence import PairKey, pair_counts
from .records import ScanImage

DESCRIPTORS_PER_IMAGE = 300
RATIO = 0.8
"""A neighbour votes when its distance is below this ratio of the farthest of the
``NEIGHBOURS`` (the background), compared on squared distances as ``RATIO**2``."""
MIN_VOTES = 2
"""Fewer votes than this never make a candidate (unrelated pairs rarely get 3 or more)."""
NEIGHBOURS = 8
EXACT_MAX = 1_000_000
"""Descriptors searched exactly (about 3,300 images); above, FAISS IVF (without FAISS the votes
are skipped with a warning)."""
BLOCK_BYTES = 256 << 20
"""Memory of one block of the exact search (query rows x all descriptors, float32)."""


def image_descriptors(rgb: np.ndarray, mirrored: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """RootSIFT descriptors of an image (and of its mirror image when ``mirrored``).

    A multi-panel figure (``match.panels.find_panels``) gives those of each panel, with the
    panel's own contrast stretch: a panel reused elsewhere then votes with as many keypoints as
    a single image would, and a dark panel beside bright ones is not left without any."""
    parts = [rgb[y0:y1, x0:x1] for y0, y1, x0, x1 in find_panels(rgb)] or [rgb]
    descs, mirrors = [], []
    for part in parts:
        g = to_grey(part)
        g, _ = resize_by(g, work_factor(g.shape, MAX_SIDE))
        descs.append(strongest_root_sift(g, DESCRIPTORS_PER_IMAGE))
        if mirrored:
            flipped = np.ascontiguousarray(g[:, ::-1])
            mirrors.append(strongest_root_sift(flipped, DESCRIPTORS_PER_IMAGE))
    return np.concatenate(descs), np.concatenate(mirrors) if mirrored else None


class TooManyDescriptors(RuntimeError):
    """The exact search would take too long and FAISS is not installed."""


def nearest(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    should_stop: StopFn | None = None,
    owners: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and indices ``(nq, k)`` of the nearest unit rows of ``base``:
    exact in blocks of bounded memory up to ``EXACT_MAX`` rows, FAISS IVF above.

    ``owners``: (image of each query row, image of each base row); in the exact search a
    query's own image is left out before the ``k`` nearest are taken, so repetitive texture
    within one image cannot crowd out the matches in others."""
    k = min(k, len(base))
    if len(base) > EXACT_MAX:
        try:
            import faiss
        except ImportError as exc:
            raise TooManyDescriptors(
                f"{len(base):,} descriptors: the local-feature votes need FAISS above "
                f"{EXACT_MAX:,} (pip install faiss-cpu)"
            ) from exc
        nlist = int(4 * np.sqrt(len(base)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(128), 128, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(base[rng.choice(len(base), min(len(base), 64 * nlist), replace=False)])
        index.nprobe = 8
        index.add(base)
        sims, idxs = [], []
        for start in range(0, len(queries), 1 << 16):
            check_cancel(should_stop, "scan")
            sim, idx = index.search(queries[start : start + (1 << 16)], k)
            sims.append(np.maximum(2 - 2 * sim, 0))
            idxs.append(idx.astype(np.int64))
        return np.concatenate(sims), np.concatenate(idxs)
    xb = torch.from_numpy(base)
    base_owner = None if owners is None else torch.from_numpy(owners[1])
    rows = max(16, BLOCK_BYTES // (4 * max(1, len(base))))
    dists, idx = [], []
    for start in range(0, len(queries), rows):
        check_cancel(should_stop, "scan")
        sim = torch.from_numpy(queries[start : start + rows]) @ xb.T
        if base_owner is not None:
            q_owner = torch.from_numpy(owners[0][start : start + rows])
            sim.masked_fill_(q_owner[:, None] == base_owner[None, :], -4.0)  # below any cosine
        v, i = sim.topk(k, dim=1)
        dists.append((2 - 2 * v).clamp_(min=0).numpy())
        idx.append(i.numpy())
    if not dists:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(dists), np.concatenate(idx)


def ratio_votes(q_owner: np.ndarray, dist: np.ndarray, nn_owner: np.ndarray) -> np.ndarray:
    """``(query image, voted image)`` rows: each query descriptor votes once for every other
    image holding one of its neighbours closer than ``RATIO`` times the farthest of its
    ``NEIGHBOURS`` (a descriptor of an unrelated image, as long as fewer images than that share
    it). Neighbours in the query's own image are skipped. An image reused several times gets
    votes from each copy; a match as close as the background gets none."""
    d = np.where(nn_owner == q_owner[:, None], np.inf, dist)
    finite = np.isfinite(d)
    ref = np.where(finite, d, -np.inf).max(axis=1)
    ok = finite & (finite.sum(axis=1) >= 2)[:, None] & (d < RATIO * RATIO * ref[:, None])
    desc, col = np.nonzero(ok)
    rows = np.unique(np.c_[desc, nn_owner[desc, col]], axis=0)  # one vote per descriptor+image
    return np.c_[q_owner[rows[:, 0]], rows[:, 1]].astype(np.int64).reshape(-1, 2)


def keypoint_candidates(
    items: Sequence[ScanImage],
    within: bool,
    k: int,
    images: Callable[[Sequence[ScanImage]], Iterable[tuple[int, np.ndarray | None]]],
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    files: Sequence[int] | None = None,
) -> dict[PairKey, int]:
    """The ``k`` most voted partners of every query image, as ``{(i, j): votes}`` (``i < j``,
    only pairs the scan counts, ``evidence.pair_counts`` with ``files``, at least
    ``MIN_VOTES``). ``images(items)`` yields ``(position, pixels or None)`` for every item
    (``verify.iter_scan_images``); unreadable images give no votes."""
    roles = [it.role for it in items]
    if k <= 0 or not any(r == "query" for r in roles) or len(items) < 2:
        return {}
    base, owner, queries, q_owner = [], [], [], []
    for step, (n, rgb) in enumerate(images(items), 1):
        check_cancel(should_stop, "scan")
        it = items[n]
        desc, mirror = np.zeros((0, 128), np.float32), None
        if rgb is not None:  # unreadable since embedding: no votes (verification says why)
            try:
                desc, mirror = image_descriptors(rgb, it.role == "query")
            except Exception:  # degenerate pixels (a tiny or constant plane): no votes
                desc, mirror = np.zeros((0, 128), np.float32), None
        if within or it.role != "query":  # a cross-only scan votes for references only
            base.append(desc)
            owner += [n] * len(desc)
        if mirror is not None:
            for d in (desc, mirror):
                queries.append(d)
                q_owner += [n] * len(d)
        if on_progress is not None:
            on_progress(step, len(items), {"stage": "keypoints"})
    if not owner or not q_owner:
        return {}
    owner_a, q_owner_a = np.asarray(owner), np.asarray(q_owner)
    # the search leaves out a query's own image, or its whole file when planes of one file are
    # not paired: sibling frames must not take the nearest places of other files' descriptors
    exclude = (
        (q_owner_a, owner_a)
        if files is None
        else (np.take(files, q_owner_a), np.take(files, owner_a))
    )
    try:
        dist, idx = nearest(
            np.concatenate(queries),
            np.concatenate(base),
            NEIGHBOURS,
            should_stop,
            exclude,
        )
    except TooManyDescriptors as exc:
        warnings.warn(f"local-feature candidates skipped: {exc}", RuntimeWarning, stacklevel=2)
        return {}
    rows = ratio_votes(q_owner_a, dist, owner_a[idx])
    pairs, counts = np.unique(rows, axis=0, return_counts=True)
    votes: dict[PairKey, int] = {}
    for (i, j), c in zip(pairs.tolist(), counts.tolist(), strict=True):
        if pair_counts(roles, i, j, within, files):
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
