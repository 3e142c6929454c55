"""Shared fixtures: real images from ../shared/data and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BTA_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test images not found at {path} (set BTA_SHARED_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data with the real BCCD and DSB2018 images."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def bccd_images(shared_data) -> list[Path]:
    """Real BCCD blood-smear JPEGs (640x480 RGB), sorted."""
    return sorted((shared_data / "bccd" / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def dsb_images(shared_data) -> list[Path]:
    """Real DSB2018 nuclei PNGs (fluorescence, brightfield, tissue), sorted."""
    return sorted((shared_data / "dsb2018" / "images").glob("*.png"))


@pytest.fixture(scope="session")
def tiny_model():
    """An efficientnet-lite0 BTA model with a small random projector/head at 64 px (plumbing only)."""
    import torch

    from bta_core.model import BTAModel, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig.for_backbone("efficientnet-lite0", projector_dim=256, image_size=64)
    return BTAModel(cfg).eval()


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint that separates same-source from different images on real data.

    The bundled default model when it is present; otherwise a small model trained here.
    """
    from bta_core.checkpoint import DEFAULT_MODEL_PATH

    if DEFAULT_MODEL_PATH.exists():
        return DEFAULT_MODEL_PATH
    pytest.skip("bundled default model not present yet")


@pytest.fixture(scope="session")
def cosine_model():
    """efficientnet-lite0 ImageNet features scored by cosine, (1 + cos) / 2, behind the BTA
    model interface: ranks easy copies without a trained head (plumbing and ranking tests)."""
    import torch
    import torch.nn.functional as F

    from bta_core.model import BTAModel, ModelConfig

    class Passthrough(torch.nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.out_dim = dim

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            return y

    class CosineScore(torch.nn.Module):
        @staticmethod
        def _probs(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
            za, zb = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
            return ((1 + za @ zb.T) / 2).clamp(1e-6, 1 - 1e-6)

        def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
            return torch.logit(self._probs(z_a, z_b).diagonal())

        def score_matrix(self, z_a, z_b, chunk_pairs: int = 0, logits: bool = False):
            p = self._probs(z_a, z_b)
            return torch.logit(p) if logits else p

    cfg = ModelConfig.for_backbone(
        "efficientnet-lite0", projector_dim=32, image_size=128, threshold=0.9
    )
    model = BTAModel(cfg)
    model.projector, model.head = Passthrough(1280), CosineScore()
    model.checkpoint_path = "test: efficientnet-lite0 features + cosine"
    return model.eval()
