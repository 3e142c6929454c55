"""Collection whitening (bta_core.whitening): label-free adaptation of the held-out eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bta_core.imageio import load_image
from bta_core.model import embed_images
from bta_core.whitening import MIN_IMAGES, Whitening, fit_whitening, pair_similarity


def whitened_cosine(w: Whitening | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine after ``w`` with nothing left out (plain cosine when ``w`` is None): the
    reference the scan's pair-left-out similarity is compared with."""
    if w is None:
        return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)
    return (w.apply(a) * w.apply(b)).sum(-1)


def test_shared_appearance_is_removed_and_copies_stay_close():
    """Rows that share one strong direction (one stain, one camera) have raw cosines near 1;
    after whitening, unrelated rows are near 0 while a slightly perturbed copy stays close."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(64, generator=g) * 5
    rows = common + torch.randn(40, 64, generator=g)
    copy = rows[0] + 0.05 * torch.randn(64, generator=g)
    w = fit_whitening(rows)
    assert w is not None
    raw = whitened_cosine(None, rows[1:], rows[:-1])
    white = whitened_cosine(w, rows[1:], rows[:-1])
    assert raw.min() > 0.8  # look-alikes by raw cosine
    assert white.abs().mean() < 0.2  # not after whitening
    assert whitened_cosine(w, copy[None], rows[:1]).item() > 0.95
    assert torch.allclose(w.apply(rows).norm(dim=1), torch.ones(len(rows)), atol=1e-5)


def test_too_few_images_or_wrong_shape():
    x = torch.randn(MIN_IMAGES - 1, 8)
    assert fit_whitening(x) is None
    assert fit_whitening(torch.randn(MIN_IMAGES, 8)) is not None
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_whitening(torch.randn(4, 5, 6))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(torch.randn(20, 8), shrinkage=0.0)
    assert fit_whitening(torch.ones(20, 8)) is None  # one direction: nothing to whiten


def test_real_smears_look_alike_until_whitened(bccd_images, cosine_model):
    """On real blood smears of one camera the frozen features make every pair look alike;
    fitted on the smears themselves (no labels), whitening separates them and still ranks a
    noisy copy of a smear above every unrelated pair."""
    rng = np.random.default_rng(0)
    smears = [load_image(p) for p in bccd_images[:24]]
    noisy = np.clip(smears[0] + rng.normal(0, 0.03, smears[0].shape), 0, 1)
    z = embed_images(cosine_model, [*smears, noisy])
    w = fit_whitening(z[:24])
    iu, ju = np.triu_indices(24, k=1)
    raw = whitened_cosine(None, z[iu], z[ju])
    white = whitened_cosine(w, z[iu], z[ju])
    copy = whitened_cosine(w, z[24:], z[:1]).item()
    assert raw.median() > 0.7, "the frozen features should make smears look alike"
    assert white.median().abs() < 0.1
    assert copy > white.max().item()


def test_leaving_the_pair_out_equals_fitting_without_it():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 12, generator=g) + 2.0
    w = fit_whitening(x)
    for i, j in [(0, 1), (3, 17), (28, 29)]:
        keep = [k for k in range(30) if k not in (i, j)]
        # the refit's ridge follows its own trace; the downdate keeps the fitted one
        want = whitened_cosine(fit_whitening(x[keep]), x[i : i + 1], x[j : j + 1])
        got = pair_similarity(w, x[i : i + 1], x[j : j + 1])
        assert got.item() == pytest.approx(want.item(), abs=0.02)
    assert pair_similarity(w, x[:3], x[:3]).tolist() == [1.0, 1.0, 1.0]


def test_an_image_outside_the_fit_is_not_left_out():
    """A reference-index neighbour compared with a scanned folder was never fitted: only the
    folder's image is left out. Taking out both once gave cosines of +-1e13 (a broken
    covariance) that decided verdicts."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 12, generator=g) + 2.0
    w = fit_whitening(x[:30])  # rows 30.. are outside, as index neighbours are
    for i, j in [(0, 31), (3, 39), (29, 30)]:
        keep = [k for k in range(30) if k != i]
        want = whitened_cosine(fit_whitening(x[keep]), x[i : i + 1], x[j : j + 1])
        got = pair_similarity(w, x[i : i + 1], x[j : j + 1], True, False)
        assert got.item() == pytest.approx(want.item(), abs=0.02)
    both_out = pair_similarity(w, x[30:35], x[35:40], False, False)
    assert torch.allclose(both_out, whitened_cosine(w, x[30:35], x[35:40]), atol=1e-5)
    per_row = torch.tensor([True, False, True, False, True])
    mixed = pair_similarity(w, x[30:35], x[:5], per_row, torch.tensor(True))
    assert mixed.abs().max() <= 1.0 + 1e-5


def test_a_copy_inside_a_small_collection_stays_alike(bccd_images, trained_checkpoint):
    """A scan of 16 real smears holding a crop of one of them: fitted on all 17, the plain
    whitened cosine of the copy pair collapses (the fit stretches exactly their difference);
    with the pair left out it stays above nearly every unrelated pair."""
    from bta_core.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint, device="cpu")
    smears = [load_image(p) for p in bccd_images[::9][:16]]
    h, w_ = smears[0].shape[:2]
    crop = smears[0][h // 8 : h - h // 8, w_ // 8 : w_ - w_ // 8]
    z = embed_images(model, [*smears, crop])
    w = fit_whitening(z)
    iu, ju = np.triu_indices(16, k=1)
    unrelated = pair_similarity(w, z[iu], z[ju]).numpy()
    inside = whitened_cosine(w, z[:1], z[16:]).item()
    left_out = pair_similarity(w, z[:1], z[16:]).item()
    assert left_out > inside + 0.3
    assert left_out > np.quantile(unrelated, 0.9)


def test_d4_collection_similarity_takes_the_best_orientation_like_the_score():
    """With --tta d4 the model compares every orientation of B: a copy stored rotated matches
    A only in one of them, and the collection similarity must look there too."""
    from bta_core.scan.collection import collection_similarities, collection_whitening

    g = torch.Generator().manual_seed(3)
    # more dimensions than images, as real embeddings: only the upright views are fitted, and
    # leaving out a turned view that never was in once gave cosines of 1e12
    z = torch.randn(24, 8, 64, generator=g) + 1.0  # 24 images x 8 orientations
    z[5, 3] = z[2, 0] + 0.01 * torch.randn(64, generator=g)  # image 5 turned is image 2
    w = collection_whitening(z)
    keys = [(i, j) for i in range(24) for j in range(i + 1, 24)]
    sims = collection_similarities(w, z, keys)
    assert np.abs(sims).max() <= 1.0 + 1e-5
    copy = keys.index((2, 5))
    plain = collection_similarities(w, z[:, 0], [(2, 5)])
    assert sims[copy] > 0.9 > plain[0]
    assert sims[copy] == sims.max()


def test_a_turned_view_is_compared_with_the_upright_one_left_out():
    """pair_similarity of A with B turned (not fitted), leaving out B's fitted upright view,
    equals a refit without A and upright B."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 40, generator=g) + 2.0
    turned = torch.randn(30, 40, generator=g) + 2.0  # other views, never fitted
    w = fit_whitening(x)
    for i, j in [(0, 1), (4, 20)]:
        keep = [k for k in range(30) if k not in (i, j)]
        want = whitened_cosine(fit_whitening(x[keep]), x[i : i + 1], turned[j : j + 1])
        got = pair_similarity(w, x[i : i + 1], turned[j : j + 1], fitted_b=x[j : j + 1])
        assert got.item() == pytest.approx(want.item(), abs=0.03)


def test_a_content_fitted_twice_is_fitted_once():
    """A pixel-identical copy of A in the scanned folder must not stay in the fit when the
    pair (A, B) is left out: one fitted vector per content, and a pair of one content leaves
    out only A."""
    from bta_core.scan.collection import (
        collection_similarities,
        collection_whitening,
        unique_rows,
    )

    g = torch.Generator().manual_seed(6)
    z = torch.randn(20, 48, generator=g) + 1.0
    z[19] = z[0]  # a second file with A's pixels
    z[18] = z[0] + 0.6 * torch.randn(48, generator=g)  # a copy of A (a crop, say)
    hashes = [f"h{i}" for i in range(19)] + ["h0"]
    assert unique_rows(hashes, 20) == list(range(19))
    deduped = collection_whitening(z, hashes=hashes)
    twice = collection_whitening(z)
    sim_once = collection_similarities(deduped, z, [(0, 18), (0, 19)], hashes=hashes)
    sim_twice = collection_similarities(twice, z, [(0, 18)])
    assert sim_once[0] > sim_twice[0] + 0.2
    assert sim_once[1] == pytest.approx(1.0)  # a pair of one content, not a broken downdate
