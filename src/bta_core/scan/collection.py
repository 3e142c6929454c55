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


def collection_whitening(
    z: torch.Tensor, fit_rows: int | None = None, background: torch.Tensor | None = None
) -> Whitening | None:
    """Whitening fitted on a scan's embeddings, the first ``fit_rows`` images (all: None).

    A collection of fewer than ``whitening.MIN_IMAGES`` images cannot describe itself: with a
    ``background`` (a sample of the reference index it is looked up in) it is fitted on both,
    else there is none (None)."""
    rows = _first_orientation(z)[: len(z) if fit_rows is None else fit_rows]
    if len(rows) < MIN_IMAGES and background is not None and len(background):
        rows = torch.cat([rows.float(), background.float()])
    return fit_whitening(rows) if len(rows) else None


def collection_similarities(
    w: Whitening | None,
    z: torch.Tensor,
    keys: Sequence[PairKey],
    fit_rows: int | None = None,
    chunk: int = 16384,
) -> np.ndarray | None:
    """Each pair's whitened cosine with the pair left out of the fit (``whitening.pair_similarity``;
    with D4 embeddings, the best of B's 8 orientations, as the model score). Only images among
    the first ``fit_rows`` (None: all) were fitted and are left out; an index neighbour after
    them is compared as it is. None without a whitening."""
    if w is None:
        return None
    n_fit = len(z) if fit_rows is None else fit_rows
    out = np.empty(len(keys), dtype=np.float64)
    as_is = _first_orientation(z)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        a = torch.tensor([i for i, _ in part], dtype=torch.long)
        b = torch.tensor([j for _, j in part], dtype=torch.long)
        za, a_in, b_in = as_is[a], a < n_fit, b < n_fit
        if z.ndim == 3:
            sims = [pair_similarity(w, za, z[b, o], a_in, b_in) for o in range(z.shape[1])]
            sim = torch.stack(sims).max(dim=0).values
        else:
            sim = pair_similarity(w, za, z[b], a_in, b_in)
        out[start : start + len(part)] = sim.double().numpy()
    return out
