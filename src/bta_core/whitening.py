"""Collection whitening: adapt embeddings to the images at hand, without labels.

Images of one lab, stain and camera share most of their appearance, so their embeddings crowd
into a narrow cone: raw cosines of unrelated look-alikes sit close to those of true copies,
and the crowding differs from one collection to the next. Whitening with the statistics of the
collection being searched (its own mean and shrunk covariance) removes what all its images
share; a copy stays close to its source while look-alikes spread out. Unrelated pairs then score
near 0 whatever the collection, which is what lets one threshold transfer (measured in
``docs/model-card.md``, leave one data set out).

``fit_whitening`` needs no labels: a scan fits it on the images it scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_SHRINKAGE = 0.1
"""Weight of the identity in the shrunk covariance, as a share of the mean variance."""
MIN_IMAGES = 16
"""Fewer images than this give no usable covariance: :func:`fit_whitening` returns None."""


@dataclass(frozen=True)
class Whitening:
    """``x -> (normalize(x) - mean) @ matrix``, fitted on one collection."""

    mean: torch.Tensor
    matrix: torch.Tensor
    n_images: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whitened, L2-normalised vectors of ``x`` (``(..., D)``)."""
        u = F.normalize(x.float(), dim=-1) - self.mean
        return F.normalize(u @ self.matrix, dim=-1)


def fit_whitening(
    x: torch.Tensor, shrinkage: float = DEFAULT_SHRINKAGE, min_images: int = MIN_IMAGES
) -> Whitening | None:
    """Whitening of the rows of ``x`` (``(N, D)``), or None with fewer than ``min_images`` rows.

    The covariance of the L2-normalised rows is shrunk towards ``shrinkage`` times its mean
    variance, so a collection smaller than the dimension still gives a well-posed inverse.
    """
    if x.ndim != 2:
        raise ValueError(f"fit_whitening expects (N, D) vectors, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < max(2, min_images):
        return None
    if shrinkage <= 0:
        raise ValueError(f"shrinkage must be > 0, got {shrinkage}")
    u = F.normalize(x.double(), dim=-1)
    mean = u.mean(0)
    u = u - mean
    cov = u.T @ u / n
    ridge = shrinkage * float(cov.trace()) / d
    if ridge <= 0:  # every row the same direction: nothing to whiten
        return None
    evals, evecs = torch.linalg.eigh(cov + ridge * torch.eye(d, dtype=cov.dtype))
    matrix = (evecs * evals.clamp(min=ridge).rsqrt()) @ evecs.T
    return Whitening(mean.float(), matrix.float(), n)


def whitened_cosine(w: Whitening | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``a`` and ``b`` after ``w`` (plain cosine when ``w`` is None)."""
    if w is None:
        return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)
    return (w.apply(a) * w.apply(b)).sum(-1)
