"""Projector and similarity head: shapes, split-head all-pairs scoring, symmetry."""

import torch

from bta_core.heads import Projector, SimilarityHead, symmetric_score_matrix


def test_projector_shapes_and_normalisation():
    proj = Projector([32, 64, 64, 16]).train()
    z = proj(torch.randn(50, 32))
    assert z.shape == (50, 16)
    assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-4)
    proj.eval()
    z1 = proj(torch.randn(1, 32))
    assert z1.shape == (1, 16)  # one image works at inference (running statistics)


def test_paper_sizes():
    proj = Projector()
    linears = [m for m in proj.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2048, 4096),
        (4096, 4096),
        (4096, 4096),
    ]
    assert all(m.bias is None for m in linears)
    head = SimilarityHead(4096)
    sizes = [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [512, 256, 64, 16, 1]


def test_score_matrix_equals_concatenated_head():
    torch.manual_seed(0)
    head = SimilarityHead(24).eval()
    za, zb = torch.randn(37, 24), torch.randn(23, 24)
    ref = head.concat_score_matrix(za, zb)
    for chunk in (1 << 21, 100, 7, 1):
        ours = head.score_matrix(za, zb, chunk_pairs=chunk)
        assert ours.shape == (37, 23)
        assert torch.allclose(ours, ref, atol=1e-5), chunk


def test_symmetric_score_is_order_free():
    torch.manual_seed(0)
    head = SimilarityHead(8).eval()
    za, zb = torch.randn(5, 8), torch.randn(4, 8)
    s = symmetric_score_matrix(head, za, zb)
    assert torch.allclose(s, symmetric_score_matrix(head, zb, za).T, atol=1e-6)
    one_way = head.score_matrix(za, zb)
    assert not torch.allclose(s, one_way)


def test_symmetric_within_one_set_uses_one_pass():
    torch.manual_seed(1)
    head = SimilarityHead(8).eval()
    z = torch.randn(9, 8)
    one_pass = symmetric_score_matrix(head, z, z)
    two_pass = symmetric_score_matrix(head, z, z.clone())
    assert torch.allclose(one_pass, two_pass, atol=1e-6)
    assert torch.allclose(one_pass, one_pass.T)
