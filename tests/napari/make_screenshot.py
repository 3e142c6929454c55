"""Save docs/napari-screenshot.png: the sample pair, the Compare panel and its overlays.

Run with ``xvfb-run -a python tests/napari/make_screenshot.py [checkpoint]`` (default: the
bundled model).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch  # noqa: F401  (before the viewer: see tests/napari/conftest.py)
import torchvision  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _model(checkpoint: str | None):
    from bta_core.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, device="cpu")  # default: the bundled model


def main() -> None:
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_bta._compare import ComparePanel
    from napari_bta._state import MODEL

    MODEL.set(_model(sys.argv[1] if len(sys.argv) > 1 else None))
    viewer = napari.Viewer(title="napari-bta")
    viewer.window._qt_window.resize(1600, 950)
    layers = viewer.open_sample("napari-bta", "reuse_pair")
    panel = ComparePanel(viewer)
    viewer.window.add_dock_widget(panel, name="BTA compare", area="right")
    panel.native.setMaximumWidth(560)
    panel._layers.value = [ly.name for ly in layers]
    panel.run(pair=(0, 1))  # the planted reuse: field A and the rotated crop B
    app = QApplication.instance()
    while panel.controls.busy:
        app.processEvents()
        time.sleep(0.05)
    viewer.layers.selection.active = layers[0]
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    for _ in range(160):  # let the info toasts time out
        app.processEvents()
        time.sleep(0.05)
    out = ROOT / "docs" / "napari-screenshot.png"
    viewer.screenshot(str(out), canvas_only=False)
    print(out, panel._verdict.value)
    viewer.close()


if __name__ == "__main__":
    main()
