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


def pair_similarity(
    w: Whitening,
    a: torch.Tensor,
    b: torch.Tensor,
    a_in_fit: bool | torch.Tensor = True,
    b_in_fit: bool | torch.Tensor = True,
    fitted_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row-wise whitened cosine of two images of the fitted collection, with the pair left out.

    A collection's own covariance holds each of its images: whitening with it stretches the
    one direction in which a copy and its source differ from everything else, so a copy inside
    the fitted collection looks less alike than one outside it, the more so the smaller the
    collection. Each pair is therefore compared as if the whitening had been fitted without its
    two images: mean and covariance are downdated exactly (a rank-5 change of the shrunk
    covariance, Woodbury identity; only the ridge keeps its fitted size). O(D) per pair.

    ``a_in_fit``/``b_in_fit`` (a bool, or one per row) say whether each image was among those
    fitted: only those are left out. Taking out a vector that was never in would break the
    covariance (a reference-index neighbour compared with a scanned folder, for example).
    ``fitted_b``: the vectors of B that were fitted, when ``b`` is another view of them (B
    turned, with ``--tta d4``, while only its upright embedding was fitted); default ``b``.
    """
    n = float(w.n_images)
    ra = torch.as_tensor(a_in_fit, dtype=torch.float64).expand(len(a))
    rb = torch.as_tensor(b_in_fit, dtype=torch.float64).expand(len(a))
    m = n - ra - rb  # (B,)
    if n - 2.0 < 2:
        raise ValueError("leaving a pair out needs a whitening fitted on at least 4 images")
    # whitened (M^-1/2 x) basis: the mean, the compared u_a, u_b and the removed v_a, v_b;
    # their Gram Q holds x^T M^-1 y
    mu = w.mean @ w.matrix

    def white(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1) @ w.matrix

    ua, ub = white(a), white(b)
    vb = ub if fitted_b is None else white(fitted_b)
    basis = torch.stack([mu.expand_as(ua), ua, ub, ua, vb], dim=1).double()  # (B, 5, D)
    q = basis @ basis.transpose(1, 2)  # (B, 5, 5)
    # the downdated covariance (times m/n) is M + B C B^T with C from the removed images and
    # the shifted mean mu' = (n mu - ra v_a - rb v_b) / m
    e = torch.eye(5, dtype=q.dtype)
    zero, one = torch.zeros_like(m), torch.ones_like(m)
    mu_new = torch.stack([n / m, zero, zero, -ra / m, -rb / m], dim=-1)  # (B, 5)
    removed = torch.diag_embed(torch.stack([zero, zero, zero, ra, rb], dim=-1))
    lam = (n / m).view(-1, 1, 1) * torch.outer(e[0], e[0]) - mu_new[:, :, None] * mu_new[:, None]
    lam = lam - removed / m.view(-1, 1, 1)
    c = (m / n).view(-1, 1, 1) * lam
    # (M + B C B^T)^-1 = M^-1 - M^-1 B C (I + Q C)^-1 B^T M^-1 (C need not be invertible)
    qc = q @ c
    corr = qc @ torch.linalg.solve(e + qc, q)  # (B, 5, 5)
    form = q - corr  # p^T form q' = x^T M'^-1 y for x = B p, y = B q'
    da = torch.stack([-n / m, one, zero, ra / m, rb / m], dim=-1)  # u_a - mu'
    db = torch.stack([-n / m, zero, one, ra / m, rb / m], dim=-1)  # u_b - mu'
    ab = torch.einsum("bi,bij,bj->b", da, form, db)
    aa = torch.einsum("bi,bij,bj->b", da, form, da)
    bb = torch.einsum("bi,bij,bj->b", db, form, db)
    cos = (ab / (aa * bb).clamp(min=1e-24).sqrt()).float()
    # an image against itself is one image, not a pair to leave out: the top similarity
    return torch.where((a == b).all(dim=-1), torch.ones_like(cos), cos)
