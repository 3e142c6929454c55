"""The scanned collection as evidence: embeddings whitened with the scan's own statistics.

Images of one lab, stain and camera embed close together, so the model scores their unrelated
pairs high. Whitened with the statistics of the images being scanned (``bta_core.whitening``,
no labels), what they all share stops counting: a copy stays close to its source, look-alikes
spread out around 0. Each pair's whitened cosine is recorded as
``Evidence.collection_similarity``; ``verdict.decide`` lets a model-only pair be ``suspect`` only
when it also reaches the checkpoint's collection threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..whitening import Whitening, fit_whitening
from .evidence import PairKey


def _first_orientation(z: torch.Tensor) -> torch.Tensor:
    return z[:, 0] if z.ndim == 3 else z  # D4 embeddings: the image as it is


def collection_whitening(z: torch.Tensor) -> Whitening | None:
    """Whitening fitted on a scan's embeddings (None below ``whitening.MIN_IMAGES`` images)."""
    return fit_whitening(_first_orientation(z)) if len(z) else None


def collection_similarities(
    w: Whitening | None, z: torch.Tensor, keys: Sequence[PairKey], chunk: int = 65536
) -> np.ndarray | None:
    """Whitened cosine of every pair in ``keys`` (None without a whitening)."""
    if w is None:
        return None
    zw = w.apply(_first_orientation(z))
    out = np.empty(len(keys), dtype=np.float64)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        a = torch.tensor([i for i, _ in part], dtype=torch.long)
        b = torch.tensor([j for _, j in part], dtype=torch.long)
        out[start : start + len(part)] = (zw[a] * zw[b]).sum(1).double().numpy()
    return out
