"""Views: the paper's parameters, and reuse views that keep real images recognisable."""

import numpy as np
import pytest
import torch

from bta_core.augment import (
    PAPER_VIEWS,
    REUSE_VIEWS,
    ViewConfig,
    apply_view,
    dihedral_apply,
    dihedral_invert,
    gaussian_blur,
)
from bta_core.imageio import load_image
from bta_core.model import to_model_input


@pytest.fixture(scope="module")
def batch(bccd_images, dsb_images):
    imgs = [load_image(p) for p in bccd_images[:6] + dsb_images[:6]]
    return (to_model_input(imgs, 64) * 255).round().to(torch.uint8)


def test_paper_view_parameters():
    a, b = PAPER_VIEWS
    for v in (a, b):
        assert (
            v.crop_scale == (0.08, 1.0) and v.hflip_p == 0.5 and v.vflip_p == 0 and v.rot90_p == 0
        )
        assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_p) == (
            0.4,
            0.4,
            0.2,
            0.1,
            0.8,
        )
        assert v.grayscale_p == 0.2 and v.blur_sigma == (0.1, 2.0)
        assert v.noise_p == 0 and v.jpeg_p == 0
    assert (a.blur_p, a.solarize_p, b.blur_p, b.solarize_p) == (1.0, 0.0, 0.1, 0.2)


def test_paper_view_flip_rate_and_output(batch):
    g = torch.Generator().manual_seed(0)
    big = batch.repeat(20, 1, 1, 1)
    out, boxes, code = apply_view(big, PAPER_VIEWS[0], 48, g, return_params=True)
    assert out.shape == (240, 3, 48, 48) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert abs(float((code & 1).float().mean()) - 0.5) < 0.1
    assert float((code & ~1).abs().sum()) == 0  # no vflip / rotation in the paper views
    area = boxes[:, 2] * boxes[:, 3]
    assert float(area.min()) >= 0.07 and float(area.max()) <= 1.0


def test_reuse_dihedral_views_invert_exactly(batch):
    """With full-size crops and no colour ops, undoing the recorded flips/rotation restores the image."""
    cfg = ViewConfig(
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        hflip_p=0.5,
        vflip_p=0.5,
        rot90_p=0.9,
        transpose_p=0.5,
        jitter_p=0,
        grayscale_p=0,
        blur_p=0,
    )
    g = torch.Generator().manual_seed(3)
    out, _, code = apply_view(batch, cfg, 64, g, return_params=True)
    ref = batch.float() / 255
    assert len(set(code.tolist())) > 3
    for i in range(len(batch)):
        restored = dihedral_invert(out[i], int(code[i]))
        assert torch.allclose(restored, ref[i], atol=1e-4), int(code[i])
        assert torch.allclose(dihedral_apply(ref[i], int(code[i])), out[i], atol=1e-4)


def test_reuse_views_keep_images_recognisable(batch):
    """Each reuse view is closer to its own source than to the other images (after undoing geometry)."""
    cfg = REUSE_VIEWS[0]
    g = torch.Generator().manual_seed(1)
    out, boxes, code = apply_view(batch, cfg, 64, g, return_params=True)
    assert (boxes[:, 2] * boxes[:, 3]).min() >= 0.25 - 1e-6
    ref = batch.float() / 255
    hits = 0
    for i in range(len(batch)):
        restored = dihedral_invert(out[i], int(code[i]))
        cx, cy, w, h = boxes[i].tolist()
        x0, y0 = int((cx - w / 2) * 64), int((cy - h / 2) * 64)
        crop = ref[:, :, y0 : y0 + max(1, int(h * 64)), x0 : x0 + max(1, int(w * 64))]
        crop = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", antialias=True)
        r = restored.mean(0).flatten()
        corr = [float(np.corrcoef(r.numpy(), c.mean(0).flatten().numpy())[0, 1]) for c in crop]
        hits += int(np.nanargmax(corr) == i)
    assert hits >= len(batch) - 1


def test_blur_per_sample_sigma():
    x = torch.zeros(2, 1, 21, 21)
    x[:, :, 10, 10] = 1
    y = gaussian_blur(x, torch.tensor([0.0, 2.0]))
    assert torch.equal(y[0], x[0])
    assert float(y[1, 0, 10, 10]) < 0.1 and abs(float(y[1].sum()) - 1) < 1e-4


def test_views_are_reproducible(batch):
    a = apply_view(batch, REUSE_VIEWS[1], 32, torch.Generator().manual_seed(5))
    b = apply_view(batch, REUSE_VIEWS[1], 32, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
