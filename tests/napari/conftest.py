"""Fixtures for the napari plugin tests (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

# Import torch's stack (torchvision pulls in Triton) before any viewer exists: under Xvfb the
# viewer's OpenGL is Mesa llvmpipe, and loading Triton's LLVM after Mesa's crashes the process.
# The plugin itself guards its lazy imports with napari_bta._compat.prepare_torch_import().
import torch  # noqa: F401  isort: skip
import torchvision  # noqa: F401  isort: skip


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
