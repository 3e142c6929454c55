"""Every widget of the manifest opens as the Plugins menu opens it, fits a laptop screen, and
explains each control with a tooltip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from magicgui.widgets import Container

import napari_bta

MANIFEST = Path(napari_bta.__file__).with_name("napari.yaml")


def _widget_names() -> list[str]:
    manifest = yaml.safe_load(MANIFEST.read_text())
    return [w["display_name"] for w in manifest["contributions"]["widgets"]]


@pytest.mark.parametrize("name", _widget_names())
def test_widget_opens_from_the_plugins_menu_with_tooltips(make_napari_viewer, open_panel, name):
    from qtpy.QtWidgets import QWidget

    viewer = make_napari_viewer()
    panel = open_panel(viewer, name)
    assert isinstance(panel, QWidget)
    assert getattr(panel._viewer, "__wrapped__", panel._viewer) is viewer  # napari injected it
    assert name in viewer.window.dock_widgets or any(name in k for k in viewer.window.dock_widgets)
    untipped = [
        w.label or type(w).__name__
        for w in panel.form
        if not isinstance(w, Container) and not w.tooltip
    ]
    assert not untipped, f"controls without a tooltip in {name}: {untipped}"


def test_all_panels_fit_a_1280x800_window(make_napari_viewer, qtbot, open_panel):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    panels = {name: open_panel(viewer, name) for name in _widget_names()}
    qtbot.wait(200)
    assert window.width() <= 1280 and window.height() <= 800
    table = panels["Scan"]._table.native
    assert table.minimumHeight() >= 150  # reachable by scrolling, never squeezed to 0 rows
    for name, panel in panels.items():
        assert panel.widgetResizable()  # a scroll area: content scrolls instead of growing
        # docked together, none is squeezed to a strip that hides its controls
        assert panel.height() >= 120, f"{name} panel only {panel.height()} px high"


def test_menu_name_is_the_manifest_display_name():
    manifest = yaml.safe_load(MANIFEST.read_text())
    docs = (Path(__file__).parents[2] / "docs" / "plugin.md").read_text()
    assert f"Plugins > {manifest['display_name']}" in docs


def test_opening_the_panels_does_not_import_torch():
    """torch and OpenCV load in workers, never while napari builds the panels."""
    import subprocess
    import sys

    code = (
        "import sys, napari_bta._compare, napari_bta._scan_panel, napari_bta._train_panel, "
        "napari_bta._model_panel; print('torch' in sys.modules, 'cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_short_names_keep_their_distinct_end():
    """Compare's row labels: two channels of one stack, or two frames of a time-lapse, must
    not read the same once shortened (the end that tells them apart is kept)."""
    from napari_bta._panel import short

    a, b = short("two_channel [ch0]", 14), short("two_channel [ch1]", 14)
    assert a != b and a.endswith("[ch0]") and len(a) == 14 and "\u2026" in a
    frames = [short(f"usiigaci_T98G_timelapse_t{k:02d}.png", 14) for k in (2, 4)]
    assert frames[0] != frames[1]
    assert short("fig1.png", 14) == "fig1.png"


def test_layer_choices_follow_renamed_layers(make_napari_viewer, open_panel):
    """Renaming a layer in the layer list renames it in the Compare and Train choices (they
    offered the old names, and choosing one failed with "'Image' is not in list")."""
    import numpy as np

    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((32, 32)), name="Image")
    n_callbacks = len(first.events.name.callbacks)
    compare, train = open_panel(viewer, "Compare"), open_panel(viewer, "Train")
    later = viewer.add_image(np.zeros((32, 32)), name="Image [1]")  # added after they opened
    viewer.layers["Image"].name = "Fig2A"
    later.name = "Fig5C"
    for panel in (compare, train):
        assert panel._layers.choices == ("Fig2A", "Fig5C")
    compare._layers.value = ["Fig2A", "Fig5C"]
    removed = viewer.layers.pop(1)
    removed.name = "gone"  # a removed layer is no longer followed
    assert compare._layers.choices == ("Fig2A",)
    for panel in (compare, train):  # a closed panel stops following
        viewer.window.remove_dock_widget(panel)
    assert len(first.events.name.callbacks) == n_callbacks
