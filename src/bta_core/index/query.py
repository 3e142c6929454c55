"""Look images up in a reference index: nearest indexed images of each query, for the scan.

``scan FOLDER --index INDEX`` scores query x query pairs as usual and query x index pairs for
the ``k`` nearest indexed images of each query (cosine on the projected embeddings, the same
candidates FAISS gives a large scan); the model's head and the keypoint check then rank them.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..whitening import MIN_IMAGES
from . import store

MISSING_PROBLEM = (
    "indexed file missing (moved or deleted since it was indexed): compared by its stored "
    "embedding and hashes, and by keypoint checks cached while it was there, not checked "
    "again; 'bta-core index prune' retires it"
)
"""What skipped.csv says of an indexed image, nearest to a scanned one, whose file is gone."""

BACKGROUND_SAMPLE = 4096
"""Indexed images a small folder's whitening borrows: mean and covariance of 1280-d embeddings
are stable at this size, and the fit stays well under a second."""


def nearest(
    index: str | os.PathLike | store.ReferenceIndex, z: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, list[store.Row]]:
    """``(cosine (nq, k), row ids (nq, k), rows)`` of the nearest live indexed images."""
    idx = index if isinstance(index, store.ReferenceIndex) else store.load(index)
    sims, ids = idx.search(np.asarray(z, np.float32), k)
    return sims, ids, idx.rows


def open_for_scan(
    index: str | os.PathLike | store.ReferenceIndex, model, tta: str | None = None
) -> store.ReferenceIndex:
    """Load ``index`` and check it suits a scan with ``model`` and ``tta`` (before any work):
    a missing or damaged index, another model's index and ``tta="d4"`` are refused."""
    from .build import _check_model

    idx = index if isinstance(index, store.ReferenceIndex) else store.load(index)
    _check_model(idx, model)
    if tta == "d4":
        raise ValueError(
            "--index works on identity embeddings; it does not combine with --tta d4 "
            "(the index stores one embedding per image)"
        )
    return idx


def attach_index(emb, index: str | os.PathLike | store.ReferenceIndex, model, k: int = 32):
    """The scan's embedded queries plus the index images nearest to any of them (as references).

    ``emb`` is a ``scan.embed.Embedded`` of query images only; the result has the union of each
    query's ``k`` nearest indexed images appended with role ``"reference"``, so the usual
    scoring gives query x query and query x index pairs. Refuses another model's index.
    """
    from ..scan.embed import Embedded
    from ..scan.records import ScanImage, Skipped

    idx = open_for_scan(index, model, "d4" if emb.z.ndim != 2 else None)
    if len(emb.items) == 0 or idx.n_live == 0:
        return emb
    _, ids, rows = nearest(idx, emb.z.numpy(), k)
    query_paths = {os.path.realpath(it.path) for it in emb.items}
    chosen = sorted(
        {int(i) for i in ids.ravel() if i >= 0 and rows[int(i)].path not in query_paths}
    )
    refs = [
        ScanImage(
            rows[i].path, rows[i].path, "reference", rows[i].content_hash, 0, rows[i].pixel_hash
        )
        for i in chosen
    ]
    missing = [r for r in refs if not os.path.exists(r.path)]
    skipped = list(emb.skipped) + [Skipped(r.path, MISSING_PROBLEM) for r in missing]
    sel = np.array(chosen, np.int64)
    z_ref = torch.from_numpy(idx.embeddings(sel)).to(emb.z.dtype) if chosen else emb.z[:0]
    ph_ref = idx.phashes(sel) if chosen else np.zeros((0, *emb.phash.shape[1:]), np.uint8)
    stats = dict(
        emb.stats,
        index=str(idx.root),
        index_images=idx.n_live,
        index_candidates=len(chosen),
        index_k=k,
        index_missing=len(missing),
    )
    z = torch.cat([emb.z, z_ref])
    phash = np.concatenate([emb.phash, ph_ref.astype(emb.phash.dtype)])
    background = in_background = None
    if len(emb.items) < MIN_IMAGES:  # too few to whiten with: borrow the index's statistics
        query_pixels = {it.pixel_hash for it in emb.items if it.pixel_hash}
        ids_bg = background_ids(idx, exclude=query_paths, exclude_pixels=query_pixels)
        background = torch.from_numpy(idx.embeddings(ids_bg)).to(emb.z.dtype)
        in_background = np.isin(sel, ids_bg)  # those neighbours are fitted, so left out too
        stats["index_background"] = len(background)
    return Embedded(
        list(emb.items) + refs,
        z,
        skipped,
        stats,
        phash,
        fit_rows=len(emb.items),
        background=background,
        in_background=in_background,
    )


def background_ids(
    idx: store.ReferenceIndex,
    n: int = BACKGROUND_SAMPLE,
    exclude: set[str] = frozenset(),
    exclude_pixels: set[str] = frozenset(),
) -> np.ndarray:
    """Rows of up to ``n`` live indexed images drawn at random (fixed seed, so a scan is
    repeatable), each content once: the statistics a small folder is whitened with
    (``scan.collection``). The folder's own images, by path (``exclude``) or by decoded pixels
    (``exclude_pixels``), are left out: they are in the fit already, and a content fitted
    twice would hide what a pair shares."""
    skip = set(idx.dead)
    seen = set(exclude_pixels)
    for i, r in enumerate(idx.rows):
        if i in skip:
            continue
        if r.path in exclude or (r.pixel_hash and r.pixel_hash in seen):
            skip.add(i)
        elif r.pixel_hash:
            seen.add(r.pixel_hash)
    live = np.setdiff1d(np.arange(len(idx), dtype=np.int64), np.fromiter(skip, np.int64))
    if len(live) > n:
        live = np.sort(np.random.default_rng(0).choice(live, n, replace=False))
    return live
