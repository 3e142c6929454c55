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
