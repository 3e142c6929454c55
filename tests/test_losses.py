"""Losses against plain reference implementations written here, plus their properties."""

import pytest
import torch

from bta_core.heads import SimilarityHead
from bta_core.losses import (
    all_pairs_bce_loss,
    barlow_twins_loss,
    combined_loss,
    cross_correlation,
    nt_xent_loss,
)


def reference_bt_loss(z1, z2, lambd):
    """Loops written from the paper's formula, in float64."""
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    z1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    z2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(z1[b, i] * z2[b, j] for b in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return float(loss)


def test_bt_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    ours = float(barlow_twins_loss(z1, z2, lambda_bt=0.3))
    assert abs(ours - reference_bt_loss(z1, z2, 0.3)) < 1e-3 * max(1.0, abs(ours))


def test_bt_loss_zero_for_identical_decorrelated_inputs():
    # orthogonal columns with zero mean: C is the identity, so both terms vanish
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    z = q - q.mean(0)
    q, _ = torch.linalg.qr(z)
    z = (q * (64**0.5)).float()
    c = cross_correlation(z, z)
    assert torch.allclose(c, torch.eye(8), atol=1e-3)
    assert float(barlow_twins_loss(z, z)) < 1e-4
    # and is clearly positive for independent inputs
    assert float(barlow_twins_loss(z, torch.randn(64, 8))) > 1.0


def test_bt_loss_gradient_reaches_projector():
    from bta_core.heads import Projector

    proj = Projector([16, 32, 32, 8])
    x = torch.randn(20, 16)
    loss = barlow_twins_loss(proj(x + 0.1 * torch.randn_like(x)), proj(x))
    loss.backward()
    grads = [p.grad for p in proj.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_all_pairs_bce_equals_explicit_pairs():
    torch.manual_seed(0)
    head = SimilarityHead(8)
    za, zb = torch.randn(5, 8), torch.randn(5, 8)
    ours = all_pairs_bce_loss(head, za, zb, pos_weight=1.0)
    logits = torch.stack(
        [head(za[i : i + 1], zb[j : j + 1])[0] for i in range(5) for j in range(5)]
    )
    target = torch.eye(5).flatten()
    ref = torch.nn.BCELoss()(torch.sigmoid(logits), target)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_combined_loss_is_bce_plus_lambda_bt():
    torch.manual_seed(0)
    head = SimilarityHead(8)
    za, zb = torch.randn(6, 8), torch.randn(6, 8)
    loss, parts = combined_loss(head, za, zb, lambda_=0.5, lambda_bt=4e-3, pos_weight=1.0)
    # the parts are computed here independently, not read back from the same call
    bce = all_pairs_bce_loss(head, za, zb, pos_weight=1.0)
    bt = reference_bt_loss(za, zb, 4e-3)
    assert abs(loss.item() - (bce.item() + 0.5 * bt)) < 1e-3
    assert parts["bce"] == pytest.approx(bce.item(), abs=1e-5)


def test_mask_removes_pairs():
    torch.manual_seed(0)
    head = SimilarityHead(4)
    za, zb = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.ones(3, 3)
    mask[0, 1] = 0
    masked = all_pairs_bce_loss(head, za, zb, pos_weight=1.0, mask=mask)
    unmasked = all_pairs_bce_loss(head, za, zb, pos_weight=1.0)
    assert not torch.allclose(masked, unmasked)


def test_nt_xent_prefers_matching_views():
    z = torch.randn(16, 32)
    assert float(nt_xent_loss(z, z + 0.01 * torch.randn_like(z))) < float(
        nt_xent_loss(z, torch.randn(16, 32))
    )


def test_balanced_bce_gives_positives_half_the_weight():
    from bta_core.training.features import balanced_pair_bce

    b = 16
    logits = torch.zeros(b, b, requires_grad=True)
    valid = torch.ones(b, b, dtype=torch.bool)
    loss, _ = balanced_pair_bce(logits, valid, hard_k=0)
    loss.backward()
    g = logits.grad
    pos_total = float(g.diagonal().abs().sum())
    neg_total = float(g.abs().sum()) - pos_total
    assert abs(pos_total - neg_total) < 1e-5  # 1 positive per row weighs as much as B-1 negatives
    # the plain mean BCE of the paper gives the positives only 1/B of the gradient
    logits.grad = None
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.eye(b)).backward()
    g = logits.grad
    assert float(g.diagonal().abs().sum()) < 0.1 * float(g.abs().sum())


def test_balanced_bce_hard_negatives_and_masks():
    from bta_core.training.features import balanced_pair_bce

    torch.manual_seed(0)
    logits = torch.randn(8, 8)
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[0, 1] = valid[1, 0] = False  # same field of view: neither positive nor negative
    base, parts = balanced_pair_bce(logits, valid, hard_k=0)
    hard, parts_h = balanced_pair_bce(logits, valid, hard_k=2)
    assert "bce_hard" in parts_h and hard > base  # the hardest negatives cost more than the mean
    bumped = logits.clone()
    bumped[0, 1] = 50.0  # a masked pair changes nothing
    assert torch.allclose(balanced_pair_bce(bumped, valid, hard_k=2)[0], hard)


def test_all_pairs_bce_default_is_balanced():
    torch.manual_seed(0)
    head = SimilarityHead(8)
    za, zb = torch.randn(6, 8), torch.randn(6, 8)
    balanced = all_pairs_bce_loss(head, za, zb)
    assert torch.allclose(balanced, all_pairs_bce_loss(head, za, zb, pos_weight=5.0))
    _, parts = combined_loss(head, za, zb)
    assert abs(parts["bce"] - float(balanced.detach())) < 1e-6
