"""The bundled default model on real BCCD smears: identity is certain, look-alikes are not same."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from bta_core.imageio import load_image


@pytest.fixture(scope="module")
def default_model(trained_checkpoint):
    from bta_core.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint)
    if model.config.head != "symmetric":
        pytest.skip("bundled model predates the symmetric head")
    return model


@pytest.fixture(scope="module")
def smears(shared_data) -> list[np.ndarray]:
    """Four BCCD smears of four different field-of-view groups from the test split."""
    names = [f"BloodImage_{i:05d}.jpg" for i in (2, 5, 6, 7)]
    return [load_image(shared_data / "bccd" / "images" / n) for n in names]


def _jpeg_copy(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255


def _scores(model, images: list[np.ndarray]) -> torch.Tensor:
    from bta_core.model import embed_images

    z = embed_images(model, images)
    with torch.no_grad():
        return model.score_matrix(z, z)


def test_default_model_identity_certain_and_unrelated_smears_below_threshold(default_model, smears):
    copy = _jpeg_copy(smears[0])
    s = _scores(default_model, [*smears, smears[0].copy(), copy])
    thr = default_model.config.threshold
    assert float(s[0, 4]) >= 0.99  # the image against a lossless copy of itself
    assert torch.allclose(s, s.T, atol=1e-6)  # order does not matter
    unrelated = s[:4, :4][~torch.eye(4, dtype=torch.bool)]
    assert float(unrelated.max()) < thr  # four different smears: none is "same"
    # a JPEG re-save ranks above every unrelated pair
    assert float(s[0, 5]) > float(unrelated.max())


def test_default_model_probability_is_calibrated(default_model, smears):
    """Unrelated smears get a probability below one half and stay "different"; an image
    against itself is certain; the stored mapping puts the threshold at exactly 0.5."""
    from bta_core.assess import assess_pair
    from bta_core.calibration import score_probability

    cal = default_model.config.calibration
    assert "platt" in cal.get("probability", {}), "bundled model has no probability mapping"
    thr = default_model.config.threshold
    assert score_probability(cal, thr) == pytest.approx(0.5)
    for a, b in ((0, 1), (2, 3), (0, 2)):
        d = assess_pair(default_model, smears[a], smears[b], verify=False).decision
        ev = d.evidence
        assert d.verdict == "different" and d.probability < 0.5
        assert ev.model_probability == d.probability and ev.model_score < thr  # raw kept
        assert ev.model_probability < ev.model_score  # raw 0.93-0.98 overstates P(same)
    self_pair = assess_pair(default_model, smears[0], smears[0], verify=False).decision
    assert (self_pair.verdict, self_pair.probability) == ("same", 1.0)
