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


@pytest.fixture(autouse=True)
def no_work_left_running():
    """Every test ends with no plugin work running and no model shared."""
    from napari_bta._state import MODEL
    from napari_bta._workers import HELPERS

    yield
    MODEL.clear()
    alive = HELPERS.alive()
    for thread in alive:
        thread.join(30)
    assert not alive, f"plugin work still running after the test: {alive}"


@pytest.fixture
def open_panel():
    """``open_panel(viewer, name)``: open a panel as the Plugins menu does."""

    def open_(viewer, name: str):
        _, panel = viewer.window.add_plugin_dock_widget("napari-bta", name)
        return panel

    return open_


@pytest.fixture
def wait_idle(qtbot):
    """``wait_idle(panel)``: wait until the panel's worker has ended (its thread finished)."""

    def wait(panel, timeout: int = 120_000) -> None:
        qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)

    return wait


@pytest.fixture(scope="session")
def default_model(trained_checkpoint):
    """The bundled default model (real weights, as `bta-core score` loads it)."""
    from bta_core.checkpoint import load_checkpoint

    return load_checkpoint(str(trained_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def rotated_crop(bccd_images):
    """A real BCCD field (A) and a rotated crop of it (B), as uint8 RGB."""
    a = rgb_of(bccd_images[0])
    b = np.ascontiguousarray(np.rot90(a[60:400, 100:560], 1))
    return a, b
