"""Losses of BTA: Barlow Twins, pair BCE, the combined loss of Algorithm 2, and NT-Xent.

All losses take *projected* embeddings. ``barlow_twins_loss`` standardises them along the
batch itself, so it accepts raw or already-normalised projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAMBDA_BT = 4e-3
"""Weight of the redundancy term of L_BT (paper section 4)."""
LAMBDA_COMBINED = 2e-5
"""Weight of L_BT in the combined loss L_BCE + lambda * L_BT (paper section 5)."""


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Cross-correlation matrix C of Algorithm 1: ``bn(z_a).T @ bn(z_b) / N``.

    With DDP (``world_size > 1``) the per-rank sums are all-reduced so C is the one of the
    global batch, as in the official Barlow Twins code.
    """
    za = _standardise(z_a.float())
    zb = _standardise(z_b.float())
    c = za.T @ zb
    n = z_a.shape[0] * world_size
    if world_size > 1:
        # differentiable sum over ranks: every rank sees the global C and its gradient
        import warnings

        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            c = all_reduce(c)
    return c / n


def barlow_twins_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, lambda_bt: float = LAMBDA_BT, world_size: int = 1
) -> torch.Tensor:
    """L_BT = sum_i (1 - C_ii)^2 + lambda_bt * sum_{i != j} C_ij^2."""
    c = cross_correlation(z_a, z_b, world_size=world_size)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_bt * off_diag


def pair_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on pair logits (numerically stable form of ``BCELoss(sigmoid(logits), target)``)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def all_pairs_bce_loss(
    head: nn.Module,
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    pos_weight: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE over all B x B in-batch pairs ``(z_a[i], z_b[j])`` with the identity as target.

    ``pos_weight`` (default ``B - 1``, i.e. balanced) reweights the B positives against the
    B^2 - B negatives; ``pos_weight=1`` gives the plain mean BCE of Algorithm 2. ``mask``
    (B x B, 0/1) drops pairs from the loss, e.g. two photos of the same field of view.
    """
    b = z_a.shape[0]
    logits = head.score_matrix(z_a, z_b, logits=True)
    target = torch.eye(b, device=logits.device)
    w = float(b - 1) if pos_weight is None else float(pos_weight)
    loss = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=torch.tensor(w, device=logits.device), reduction="none"
    )
    if mask is None:
        return loss.mean()
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def combined_loss(
    head: nn.Module,
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambda_: float = LAMBDA_COMBINED,
    lambda_bt: float = LAMBDA_BT,
    pos_weight: float | None = None,
    world_size: int = 1,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Algorithm 2: L_BTA = BCE over all in-batch pairs + lambda * L_BT.

    The BCE is balanced by default (``pos_weight=None``): with the plain mean of the paper
    (``pos_weight=1``) the B positives weigh 1/B of the loss, and a head that scores every
    pair low is already near the optimum, which left the old default model's head near zero.
    Returns the loss and its parts (as floats) for logging.
    """
    bce = all_pairs_bce_loss(head, z_a, z_b, pos_weight=pos_weight, mask=mask)
    bt = barlow_twins_loss(z_a, z_b, lambda_bt=lambda_bt, world_size=world_size)
    loss = bce + lambda_ * bt
    return loss, {"bce": float(bce.detach()), "bt": float(bt.detach())}


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss on two views (the paper's SimCLR baseline)."""
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    n = z_a.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
