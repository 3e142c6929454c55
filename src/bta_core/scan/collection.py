"""The scanned collection as evidence: embeddings whitened with the scan's own statistics.

Images of one lab, stain and camera embed close together, so the model scores their unrelated
pairs high. Whitened with the statistics of the images being scanned (``bta_core.whitening``,
no labels), what they all share stops counting: a copy stays close to its source, look-alikes
spread out around 0. Each pair's whitened cosine, with the pair itself left out of the fit
(``whitening.pair_similarity``), is recorded as ``Evidence.collection_similarity``;
``verdict.decide`` lets a model-only pair be ``suspect`` only when it also reaches the
checkpoint's collection threshold. A folder too small for statistics of its own, looked up in a
reference index, borrows a sample of the index's images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..whitening import MIN_IMAGES, Whitening, fit_whitening, pair_similarity
from .evidence import PairKey


def _first_orientation(z: torch.Tensor) -> torch.Tensor:
    return z[:, 0] if z.ndim == 3 else z  # D4 embeddings: the image as it is


def unique_rows(hashes: Sequence[str], rows: int) -> list[int]:
    """The first of the ``rows`` first images of each content (pixel hash; an empty hash is
    its own content): a copy fitted twice would hide what a pair shares, left out only once."""
    seen: set[str] = set()
    keep = []
    for i, h in enumerate(hashes[:rows]):
        if not h or h not in seen:
            keep.append(i)
            seen.add(h)
    return keep


def collection_whitening(
    z: torch.Tensor,
    fit_rows: int | None = None,
    background: torch.Tensor | None = None,
    hashes: Sequence[str] | None = None,
) -> Whitening | None:
    """Whitening fitted on a scan's embeddings, the first ``fit_rows`` images (all: None), each
    content once when ``hashes`` (pixel hashes per row) are given.

    A collection of fewer than ``whitening.MIN_IMAGES`` images cannot describe itself: with a
    ``background`` (a sample of the reference index it is looked up in) it is fitted on both,
    else there is none (None)."""
    n_rows = len(z) if fit_rows is None else fit_rows
    rows = _first_orientation(z)[:n_rows]
    if hashes is not None:
        rows = rows[torch.as_tensor(unique_rows(hashes, n_rows), dtype=torch.long)]
    if len(rows) < MIN_IMAGES and background is not None and len(background):
        rows = torch.cat([rows.float(), background.float()])
    return fit_whitening(rows) if len(rows) else None


def collection_similarities(
    w: Whitening | None,
    z: torch.Tensor,
    keys: Sequence[PairKey],
    fitted: np.ndarray | None = None,
    hashes: Sequence[str] | None = None,
    chunk: int = 16384,
) -> np.ndarray | None:
    """Each pair's whitened cosine with the pair left out of the fit (``whitening.pair_similarity``;
    with D4 embeddings, the best of B's 8 orientations, as the model score, leaving out B's
    upright embedding, the one fitted).

    ``fitted``: one bool per row, whether its image is in the fit (None: all); an index
    neighbour outside it is compared as it is. ``hashes``: pixel hashes per row; a pair of one
    content was fitted once (``unique_rows``), so only A is left out. None without a whitening."""
    if w is None:
        return None
    in_fit = torch.ones(len(z), dtype=torch.bool) if fitted is None else torch.as_tensor(fitted)
    out = np.empty(len(keys), dtype=np.float64)
    as_is = _first_orientation(z)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        a = torch.tensor([i for i, _ in part], dtype=torch.long)
        b = torch.tensor([j for _, j in part], dtype=torch.long)
        a_in, b_in = in_fit[a], in_fit[b]
        if hashes is not None:
            one_content = torch.tensor(
                [bool(hashes[i]) and hashes[i] == hashes[j] for i, j in part]
            )
            b_in = b_in & ~(one_content & a_in)
        za = as_is[a]
        if z.ndim == 3:
            sims = [
                pair_similarity(w, za, z[b, o], a_in, b_in, fitted_b=z[b, 0])
                for o in range(z.shape[1])
            ]
            sim = torch.stack(sims).max(dim=0).values
        else:
            sim = pair_similarity(w, za, z[b], a_in, b_in)
        out[start : start + len(part)] = sim.double().numpy()
    return out
