"""Screenshots of each panel in a 1280x800 napari window after a real run, for docs/.

Run with ``xvfb-run -a -s "-screen 0 1600x1000x24" python tests/napari/make_screenshot.py``.
Writes docs/napari-{model,compare,scan,train}-panel.png (and docs/napari-screenshot.png, the
Compare one, which the README shows); ``repeats`` (only when named) writes
napari-repeats-panel.png, "Find repeated panels" on a figure built from BCCD fields.
``BTA_SHOTS_DIR`` sets another output folder. Uses the bundled model and real images from
../shared/data (BCCD, DSB 2018); the training run is a short one at the panel's defaults.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (before the viewer: see tests/napari/conftest.py)
import torchvision  # noqa: F401
from qtpy.QtWidgets import QWidget

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("BTA_SHARED_DATA", ROOT.parent / "shared" / "data"))
DOCS = Path(os.environ.get("BTA_SHOTS_DIR", ROOT / "docs"))
SIZE = (1280, 800)


def _pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _wait(panel, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while panel.busy and time.monotonic() < end:
        _pump(0.1)
    _pump(1.0)


def _viewer(name: str):
    import napari

    viewer = napari.Viewer(title=f"napari-bta: {name}")
    viewer.window._qt_window.resize(*SIZE)
    _, panel = viewer.window.add_plugin_dock_widget("napari-bta", name)
    _pump(0.5)
    return viewer, panel


def _save(viewer, name: str) -> Path:
    _pump(1.0)
    for toast in viewer.window._qt_window.findChildren(QWidget):  # the notification toasts
        if type(toast).__name__ == "NapariQtNotification":
            toast.close()
    _pump(1.0)
    viewer.window._qt_window.resize(*SIZE)
    _pump(0.5)
    out = DOCS / f"napari-{name.lower()}-panel.png"
    viewer.window._qt_window.grab().save(str(out))
    print(out, viewer.window._qt_window.size())
    return out


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def model_panel() -> None:
    viewer, panel = _viewer("Model")
    viewer.open_sample("napari-bta", "reuse_pair")
    panel._device.value = "cpu"
    panel.load(None)
    _wait(panel)
    viewer.reset_view()
    _save(viewer, "Model")
    viewer.close()


def compare_panel() -> None:
    viewer, panel = _viewer("Compare")
    layers = viewer.open_sample("napari-bta", "reuse_pair")
    panel._layers.value = [ly.name for ly in layers]
    panel.run()  # no model loaded: the worker loads the bundled one
    _wait(panel)
    viewer.layers.selection.active = layers[0]
    viewer.reset_view()
    out = _save(viewer, "Compare")
    shutil.copy(out, DOCS / "napari-screenshot.png")
    print(panel._verdict.value)
    viewer.close()


def _figure() -> np.ndarray:
    """Six BCCD fields on white with gutters and letters: panel D is panel A mirrored, panel F
    a turned, enlarged crop of panel B."""
    from PIL import Image, ImageDraw

    side, gutter = 240, 10
    files = sorted((DATA / "bccd" / "images").glob("*.jpg"))

    def square(path: Path) -> np.ndarray:
        rgb = _rgb(path)
        top = (rgb.shape[0] - 480) // 2
        crop = Image.fromarray(rgb[top : top + 480, 80:560])
        return np.asarray(crop.resize((side, side), Image.LANCZOS))

    panels = [square(files[k]) for k in (3, 40, 80, 0, 120, 0)]
    panels[3] = panels[0][:, ::-1]
    crop = Image.fromarray(panels[1][30:210, 40:220]).resize((side, side), Image.LANCZOS)
    panels[5] = np.rot90(np.asarray(crop))
    fig = np.full((2 * side + 3 * gutter, 3 * side + 4 * gutter, 3), 255, np.uint8)
    for k, panel in enumerate(panels):
        y, x = gutter + (k // 3) * (side + gutter), gutter + (k % 3) * (side + gutter)
        fig[y : y + side, x : x + side] = panel
    image = Image.fromarray(fig)
    draw = ImageDraw.Draw(image)
    for k in range(6):
        y, x = gutter + (k // 3) * (side + gutter), gutter + (k % 3) * (side + gutter)
        draw.rectangle((x, y, x + 20, y + 22), fill=(255, 255, 255))
        draw.text((x + 6, y + 5), "ABCDEF"[k], fill=(0, 0, 0))
    return np.asarray(image)


def repeats_panel() -> None:
    viewer, panel = _viewer("Compare")
    viewer.add_image(_figure(), name="figure 3", rgb=True)
    panel._layers.value = ["figure 3"]
    panel.repeats.run()
    _wait(panel)
    viewer.reset_view()
    _save(viewer, "Repeats")
    print(panel._status.value)
    viewer.close()


def _scan_folder(folder: Path) -> None:
    from PIL import Image

    bccd = sorted((DATA / "bccd" / "images").glob("*.jpg"))[:6]
    dsb = sorted((DATA / "dsb2018" / "images").glob("*.png"))[:6]
    for path in bccd + dsb:
        rgb = _rgb(path)
        Image.fromarray(rgb).save(folder / f"{path.stem[:16]}.png")
    a, b = _rgb(bccd[0]), _rgb(dsb[1])
    Image.fromarray(np.rot90(a[40:400, 80:560])).save(folder / "figure3_panel_b.png")
    Image.fromarray(b[:, ::-1]).save(folder / "figure5_panel_a.png")
    (folder / "corrupt_upload.tif").write_bytes(b"II*\x00 truncated")


def scan_panel(tmp: Path) -> None:
    folder = tmp / "lab-figures"
    folder.mkdir()
    _scan_folder(folder)
    viewer, panel = _viewer("Scan")
    panel._folder.value = str(folder)
    panel._out.value = str(tmp / "scan-out")
    panel.run()
    _wait(panel)
    panel.open_row(0)
    _wait(panel)
    viewer.reset_view()
    _save(viewer, "Scan")
    viewer.close()


def train_panel(tmp: Path) -> None:
    folder = tmp / "train-images"
    folder.mkdir()
    for path in sorted((DATA / "bccd" / "images").glob("*.jpg"))[:24]:
        shutil.copy(path, folder)
    viewer, panel = _viewer("Train")
    viewer.open(sorted(str(p) for p in folder.iterdir())[:3], stack=False)
    for k, layer in enumerate(viewer.layers):
        layer.translate = (0, k * 660)
    viewer.reset_view()
    panel._folder.value = str(folder)
    panel._epochs.value, panel._head_epochs.value = 1, 2
    panel._device.value = "cpu"
    out = Path(str(panel._out.value))
    panel.run()
    _wait(panel, timeout=1200)
    _save(viewer, "Train")
    viewer.close()
    for path in out.parent.glob(out.stem + "*"):  # the demo model is not kept
        path.unlink()


def main() -> None:
    from napari_bta._state import MODEL

    which = sys.argv[1:] or ["model", "compare", "scan", "train"]
    with tempfile.TemporaryDirectory(prefix="bta-shots-") as tmp:
        os.environ.setdefault("BTA_CACHE_DIR", str(Path(tmp) / "cache"))
        for name in which:
            MODEL.clear()
            if name == "model":
                model_panel()
            elif name == "compare":
                compare_panel()
            elif name == "scan":
                scan_panel(Path(tmp))
            elif name == "train":
                train_panel(Path(tmp))
            elif name == "repeats":
                repeats_panel()


if __name__ == "__main__":
    main()
