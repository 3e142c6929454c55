"""CUDA paths (skipped without a GPU): batched views and a bf16 training step on the device.

Run on a GPU machine with ``python -m pytest -m gpu``.
"""

import pytest
import torch

from bta_core.augment import REUSE_VIEWS, apply_view
from bta_core.imageio import load_image
from bta_core.model import to_model_input

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_views_on_cuda_match_cpu_geometry(bccd_images):
    imgs = [load_image(p) for p in bccd_images[:8]]
    x = (to_model_input(imgs, 64) * 255).round().to(torch.uint8)
    g = torch.Generator(device="cuda").manual_seed(0)
    out, boxes, code = apply_view(x.cuda(), REUSE_VIEWS[0], 48, g, return_params=True)
    assert out.is_cuda and out.shape == (8, 3, 48, 48)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert float((boxes[:, 2] * boxes[:, 3]).min()) >= 0.25 - 1e-6


def test_bf16_training_step_on_cuda(shared_data, tmp_path):
    from bta_core.training.config import TrainConfig
    from bta_core.training.loop import train

    cfg = TrainConfig(
        data=[str(shared_data / "bccd" / "splits.csv")],
        out=str(tmp_path / "m.safetensors"),
        backbone="efficientnet-lite0",
        projector_dim=128,
        image_size=64,
        batch_size=16,
        limit=32,
        epochs=2,
        views="reuse",
        device="cuda",
        quiet=True,
    )
    from bta_core.checkpoint import load_checkpoint

    assert load_checkpoint(train(cfg)).config.recipe["views"] == "reuse"
