"""Fixtures for the napari plugin tests (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

# Import torch's stack (torchvision pulls in Triton) before any viewer exists: under Xvfb the
# viewer's OpenGL is Mesa llvmpipe, and loading Triton's LLVM after Mesa's crashes the process.
# The plugin itself guards its lazy imports with napari_bta._compat.prepare_torch_import().
import torch  # noqa: F401  isort: skip
import torchvision  # noqa: F401  isort: skip


class _Passthrough(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y


class _CosineScore(torch.nn.Module):
    """P(same) = (1 + cos(z_a, z_b)) / 2, shaped like the BTA similarity head."""

    @staticmethod
    def _probs(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        za = torch.nn.functional.normalize(z_a.float(), dim=1)
        zb = torch.nn.functional.normalize(z_b.float(), dim=1)
        return ((1 + za @ zb.T) / 2).clamp(1e-6, 1 - 1e-6)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return torch.logit(self._probs(z_a, z_b).diagonal())

    def score_matrix(self, z_a, z_b, chunk_pairs: int = 0, logits: bool = False) -> torch.Tensor:
        p = self._probs(z_a, z_b)
        return torch.logit(p) if logits else p


@pytest.fixture(scope="session")
def feature_model():
    """Pretrained efficientnet-lite0 features scored by cosine: ranks easy copies without training."""
    from bta_core.model import BTAModel, ModelConfig

    cfg = ModelConfig.for_backbone(
        "efficientnet-lite0", projector_dim=32, image_size=128, threshold=0.9
    )
    model = BTAModel(cfg)
    model.projector = _Passthrough(1280)
    model.head = _CosineScore()
    model.checkpoint_path = "test: efficientnet-lite0 features + cosine"
    return model.eval()


@pytest.fixture
def held_model():
    """Set a model into the plugin's shared holder for one test, then clear it."""
    from napari_bta._state import MODEL

    def put(model):
        MODEL.set(model, getattr(model, "checkpoint_path", "test model"))
        return model

    yield put
    MODEL.clear()


def rgb_of(path) -> np.ndarray:
    """A real image file as uint8 RGB."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="session")
def read_rgb():
    """``read_rgb(path)``: a real image file as uint8 RGB."""
    return rgb_of
