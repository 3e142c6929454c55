"""The calibrated probability: a monotone Platt mapping, 0.5 exactly at the threshold, fitted on
pairs by ``bta-core calibrate`` and passed to the verdict next to the raw score."""

from __future__ import annotations

import numpy as np
import pytest

from bta_core.calibration import anchored_platt, platt_probability, score_probability
from bta_core.evaluation.calibrate import calibrate, fit_probability
from bta_core.verdict import DIFFERENT, SUSPECT, Evidence, Policy, decide


def _pairs(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose logit separates the classes by about 3 (a precise property)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    logit = rng.normal(np.where(y, 3.0, 0.0), 1.5)
    return y, 1 / (1 + np.exp(-logit))


def test_platt_mapping_is_monotone_and_keeps_the_ends_inside_0_1():
    s = np.linspace(0, 1, 2001)
    for platt in ([0.7, -2.9], [3.0, 1.0], anchored_platt(0.2, 0.99)):
        p = platt_probability(s, platt)
        assert np.all(np.diff(p) >= 0) and np.all((p >= 0) & (p <= 1))
        assert p[-1] > p[0]


def test_fit_recovers_the_slope_and_anchors_the_threshold():
    y, s = _pairs()
    thr = 0.97
    rec = fit_probability(y, s, thr, "synthetic")
    a, b = rec["platt"]
    assert a == pytest.approx(1.33, abs=0.3)  # log-likelihood-ratio slope of the simulation
    assert platt_probability(thr, rec["platt"]) == pytest.approx(0.5, abs=1e-9)
    assert 0 < rec["prior"] < 1 and rec["pairs"] == len(y) and rec["positives"] == y.sum()
    # the unanchored fit is calibrated on the pairs as sampled
    assert rec["ece_fit_at_pairs_prior"] < rec["ece_score"]
    with pytest.raises(ValueError, match="one class"):
        fit_probability(np.ones(10, bool), s[:10], thr)
    with pytest.raises(ValueError, match="does not rise"):
        fit_probability(y, 1 - s, thr)


@pytest.mark.parametrize("thr", [0.5, 0.9, 0.988])
def test_threshold_rule_and_probability_agree(thr):
    """score >= threshold (suspect on the model alone) exactly when probability >= 0.5."""
    cal = {"probability": {"platt": anchored_platt(0.67, thr)}}
    policy = Policy(threshold=thr)
    for s in [*np.linspace(0.001, 0.999, 97), np.nextafter(thr, 0), thr, np.nextafter(thr, 1)]:
        p = score_probability(cal, float(s))
        d = decide(Evidence(model_score=float(s), model_probability=p), policy)
        assert d.verdict == (SUSPECT if s >= thr else DIFFERENT)
        assert d.probability == p and (p >= 0.5) == (s >= thr)


def test_bundled_model_is_not_overwritten_without_out(shared_data):
    with pytest.raises(ValueError, match="shipped with napari-bta.*--out"):
        calibrate("default", [shared_data / "bccd" / "splits.csv"], quiet=True)


def test_tile_heatmaps_are_on_the_probability_scale(bccd_images, tiny_model):
    """The model heatmap holds the calibrated probability of the best window pair (the raw head
    score for a checkpoint without a mapping); the panel is titled as model similarity."""
    from dataclasses import replace
    from types import SimpleNamespace

    from bta_core.imageio import load_image
    from bta_core.match import tile_heatmaps
    from bta_core.match.render import heatmap_title

    a, b = (np.ascontiguousarray(load_image(p)[::4, ::4]) for p in bccd_images[3:5])
    raw_a, raw_b = tile_heatmaps(tiny_model, a, b, grid=6, window=0.75)
    thr = float(np.median(raw_a))
    plain = tiny_model.config
    tiny_model.config = replace(plain, calibration={"probability": {"platt": [2.0, 0.0]}})
    tiny_model.config.calibration["probability"]["platt"] = anchored_platt(2.0, thr)
    try:
        cal_a, cal_b = tile_heatmaps(tiny_model, a, b, grid=6, window=0.75)
    finally:
        tiny_model.config = plain
    platt = anchored_platt(2.0, thr)
    np.testing.assert_allclose(cal_a, platt_probability(raw_a, platt), atol=1e-5)
    np.testing.assert_allclose(cal_b, platt_probability(raw_b, platt), atol=1e-5)
    assert (cal_a >= 0.5 - 1e-6).sum() == (raw_a >= thr).sum()
    assert "model similarity" in heatmap_title(SimpleNamespace(heatmap_source="model"))
