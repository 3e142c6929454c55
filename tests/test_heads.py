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


def test_symmetric_head_is_order_free_and_identity_is_maximal():
    from bta_core.heads import SymmetricHead

    torch.manual_seed(0)
    head = SymmetricHead(16, (8, 4)).eval()
    with torch.no_grad():  # move the parameters off their initial values
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    za, zb = torch.randn(40, 16), torch.randn(40, 16)
    ab, ba = head(za, zb), head(zb, za)
    assert torch.allclose(ab, ba, atol=1e-5)
    self_a = head(za, za)
    # s(z, z) is the same maximum for every z, and no other pair beats it
    assert torch.allclose(self_a, head.identity_logit().expand(40), atol=1e-5)
    assert (torch.sigmoid(self_a) >= 0.995).all()  # identity is certain by construction
    assert (self_a[:, None] >= head.score_matrix(za, zb, logits=True) - 1e-5).all()
    near = head(za, za + 1e-3 * torch.randn_like(za))
    far = head(za, za + 1.0 * torch.randn_like(za))
    assert (near <= self_a + 1e-6).all() and (far.mean() < near.mean())


def test_symmetric_head_score_matrix_matches_rowwise_and_chunks():
    from bta_core.heads import SymmetricHead

    torch.manual_seed(1)
    head = SymmetricHead(12, (6, 4)).eval()
    za, zb = torch.randn(9, 12), torch.randn(7, 12)
    ref = torch.stack([torch.sigmoid(head(za[i].expand(7, -1), zb)) for i in range(9)])
    for chunk in (1 << 21, 10, 1):
        assert torch.allclose(head.score_matrix(za, zb, chunk_pairs=chunk), ref, atol=1e-5)
    s = symmetric_score_matrix(head, za, zb)  # one pass: already symmetric
    assert torch.allclose(s, symmetric_score_matrix(head, zb, za).T, atol=1e-5)


def test_model_config_selects_head_and_old_configs_default_to_paper():
    from bta_core.heads import SymmetricHead
    from bta_core.model import ModelConfig

    assert ModelConfig().head == "paper"
    old = ModelConfig().to_dict()
    old.pop("head")
    assert ModelConfig.from_dict(old).head == "paper"  # checkpoints written before the field
    from bta_core.heads import build_head

    assert isinstance(build_head("symmetric", 32), SymmetricHead)
    assert isinstance(build_head("paper", 32), SimilarityHead)
    import pytest

    with pytest.raises(ValueError, match="unknown head"):
        build_head("nope", 32)


def test_eval_method_scores_a_symmetric_head_model_like_the_model():
    import numpy as np

    from bta_core.evaluation.methods import BackboneFeatures, ModelMethod
    from bta_core.model import BTAModel, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig.for_backbone(
        "efficientnet-lite0", projector_dim=64, image_size=64, head="symmetric", head_sizes=[16, 4]
    )
    model = BTAModel(cfg).eval()
    x = torch.rand(5, 3, 64, 64)
    method = ModelMethod("sym", model, "memory")
    rep = method.represent(BackboneFeatures(x))
    ia, ib = np.array([0, 1, 2, 4]), np.array([3, 4, 2, 0])
    with torch.no_grad():
        z = model(x)
        ref = model.score_pairs(z[ia], z[ib]).numpy()
        assert torch.allclose(model.score_matrix(z, z), model.score_matrix(z, z).T, atol=1e-6)
    got = method.score(rep, rep, ia, ib)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got[2] == got.max()  # the self pair scores highest
