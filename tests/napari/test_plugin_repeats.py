"""Compare panel, "Find repeated panels": panels repeated inside one image layer, on figures
built from real BCCD pictures (``bta_core.match.within`` decides; the panel shows it)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_bta._layers import tool_layers
from napari_bta._repeats import SLOT, TOOL, view_camera

SIDE, GUTTER = 240, 8


def square(rgb: np.ndarray) -> np.ndarray:
    """The picture's centre square at ``SIDE`` pixels."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(rgb[top : top + s, left : left + s])
    return np.asarray(crop.resize((SIDE, SIDE), Image.LANCZOS))


def figure(panels: list[np.ndarray], cols: int = 2) -> tuple[np.ndarray, list[tuple]]:
    """Panels on white with gutters; returns the figure and the panel boxes (x0, y0, x1, y1)."""
    rows = -(-len(panels) // cols)
    fig = np.full(
        (rows * SIDE + (rows + 1) * GUTTER, cols * SIDE + (cols + 1) * GUTTER, 3), 255, np.uint8
    )
    boxes = []
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        x0, y0 = GUTTER + c * (SIDE + GUTTER), GUTTER + r * (SIDE + GUTTER)
        fig[y0 : y0 + SIDE, x0 : x0 + SIDE] = p
        boxes.append((x0, y0, x0 + SIDE, y0 + SIDE))
    return fig, boxes


@pytest.fixture(scope="module")
def mirrored_figure(bccd_images):
    """Four different BCCD fields in two rows; panel 4 is panel 1 mirrored left-right."""
    from conftest import rgb_of

    panels = [square(rgb_of(bccd_images[k])) for k in (0, 10, 20, 30)]
    panels[3] = np.ascontiguousarray(panels[0][:, ::-1])
    return figure(panels)


def iou(p, q) -> float:
    ix = max(0, min(p[2], q[2]) - max(p[0], q[0]))
    iy = max(0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = ix * iy
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def box_of(rect: np.ndarray, scale, translate) -> tuple[float, float, float, float]:
    """A napari rectangle (corners, data coordinates) -> (x0, y0, x1, y1) image pixels."""
    corners = np.asarray(rect)[:, -2:] * np.asarray(scale)[-2:] + np.asarray(translate)[-2:]
    (y0, x0), (y1, x1) = corners.min(axis=0), corners.max(axis=0)
    return (x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5)


def test_find_repeated_panels_boxes_the_mirrored_copy(
    make_napari_viewer, qtbot, open_panel, wait_idle, mirrored_figure
):
    fig, boxes = mirrored_figure
    viewer = make_napari_viewer()
    viewer.add_image(fig, name="figure 2", rgb=True)
    viewer.add_image(np.zeros((50, 50)), name="other", translate=(0, 600))
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["figure 2"]
    section = panel.repeats
    assert not section.with_model.value  # no model score by default, as the CLI
    section.button.clicked.emit()  # as a click on "Find repeated panels"
    assert panel.busy and not section.button.enabled and panel._cancel.enabled
    wait_idle(panel)
    qtbot.waitUntil(lambda: not panel.layer_updates.pending, timeout=10_000)
    (layer,) = tool_layers(viewer, TOOL, (SLOT,))
    assert layer.name == "BTA repeated panels: figure 2"
    assert type(layer).__name__ == "Shapes"
    roles = list(layer.features["role"])
    assert roles == ["panel"] * 4 + ["A", "B"]
    found = [box_of(r, layer.scale, layer.translate) for r in layer.data]
    for box, truth in zip(found[:4], boxes, strict=True):  # the four panels, outlined
        assert iou(box, truth) >= 0.9
    # the repeated pair: panel 1 and panel 4, boxed in one colour and numbered #1
    assert iou(found[4], boxes[0]) >= 0.8 and iou(found[5], boxes[3]) >= 0.8
    assert list(layer.features["label"][4:]) == ["#1", "#1"]
    colours = np.asarray(layer.edge_color)
    assert np.allclose(colours[4], colours[5]) and not np.allclose(colours[4], colours[0])
    assert layer.edge_width[4] > layer.edge_width[0]  # 'same' drawn thicker than the panels
    # the table: one row, the core's verdict and how panel 4 shows panel 1
    table = section.table.native
    assert table.rowCount() == 1
    row = [table.item(0, c).text() for c in range(table.columnCount())]
    assert row[:3] == ["1", "1 ~ 4", "same"]
    pair = section.result.search.repeated[0]
    assert row[3] == pair.decision.decided_by and row[4] == pair.how() != ""
    assert "mirror" in row[4] or "flip" in row[4]
    assert panel._status.value.endswith("4 panels, 6 pairs checked, 1 repeated")
    assert section.detail.value.startswith(f"#1 panels 1 ~ 4: {pair.explain()}")
    assert "panel 4 is panel 1 mirrored" in section.detail.value  # not "B is A"
    assert table.item(0, 4).toolTip().startswith("#1 panel 1 [8, 8, 248, 248] ~ panel 4")
    # a click on the row selects the pair's two boxes and zooms onto them
    zoom = view_camera(viewer).zoom
    table.cellClicked.emit(0, 2)
    assert layer.selected_data == {4, 5} and viewer.layers.selection.active is layer
    assert view_camera(viewer).zoom != zoom
    # running again replaces the layer: one layer, updated in place
    panel.repeats.run()
    wait_idle(panel)
    qtbot.waitUntil(lambda: not panel.layer_updates.pending, timeout=10_000)
    assert [ly.name for ly in tool_layers(viewer, TOOL)] == ["BTA repeated panels: figure 2"]
    assert tool_layers(viewer, TOOL)[0] is layer and len(layer.data) == 6


def test_one_picture_gives_no_panels_found(
    make_napari_viewer, qtbot, open_panel, wait_idle, read_rgb, bccd_images
):
    viewer = make_napari_viewer()
    viewer.add_image(read_rgb(bccd_images[5]), name="one field", rgb=True)
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["one field"]
    assert panel.repeats.run() is not None
    wait_idle(panel)
    assert "no panels found" in panel._status.value
    assert panel.repeats.table.native.rowCount() == 0
    assert not tool_layers(viewer, TOOL)


def test_a_grey_plane_of_a_stack_is_searched(
    make_napari_viewer, qtbot, open_panel, wait_idle, mirrored_figure
):
    """A channel stack: the plane the sliders show is the image searched."""
    fig, _ = mirrored_figure
    stack = np.stack([np.zeros(fig.shape[:2], np.uint16), fig.mean(axis=-1).astype(np.uint16)])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack", axis_labels=["c", "y", "x"])
    viewer.dims.set_point(0, 1)
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["stack"]
    panel.repeats.run()
    wait_idle(panel)
    qtbot.waitUntil(lambda: not panel.layer_updates.pending, timeout=10_000)
    (layer,) = tool_layers(viewer, TOOL)
    assert layer.name == "BTA repeated panels: stack[c=1]"
    assert layer.ndim == 3 and layer.translate[0] == 1  # on channel 1 only (a length-1 axis)
    assert panel.repeats.table.native.rowCount() == 1


def test_cancel_stops_the_search(
    make_napari_viewer, qtbot, open_panel, wait_idle, mirrored_figure, monkeypatch
):
    """Cancel right after the start: the search's ``should_stop`` ends it before any pair is
    decided, and neither a layer nor a table row appears."""
    import bta_core.match.within as within

    decided = []
    real = within.check_pair
    monkeypatch.setattr(within, "check_pair", lambda *a, **k: decided.append(1) or real(*a, **k))
    fig, _ = mirrored_figure
    viewer = make_napari_viewer()
    viewer.add_image(fig, name="figure 2", rgb=True)
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["figure 2"]
    assert panel.repeats.run() is not None
    panel._cancel.clicked.emit()
    assert "stopping" in panel._status.value
    wait_idle(panel)
    assert "cancelled" in panel._status.value
    assert decided == []  # stopped before the first pair of panels
    assert panel.repeats.result is None and panel.repeats.table.native.rowCount() == 0
    assert not tool_layers(viewer, TOOL)


def test_with_model_score_every_pair_carries_the_loaded_models_score(
    make_napari_viewer, qtbot, open_panel, wait_idle, held_model, default_model, mirrored_figure
):
    fig, _ = mirrored_figure
    held_model(default_model)
    viewer = make_napari_viewer()
    viewer.add_image(fig, name="figure 2", rgb=True)
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["figure 2"]
    panel.repeats.with_model.value = True
    assert panel.repeats.run() is not None
    wait_idle(panel)
    search = panel.repeats.result.search
    assert len(search.pairs) == 6
    assert all(p.decision.evidence.model_score is not None for p in search.pairs)
    assert search.repeated[0].decision.verdict == "same"  # the hash still decides it
    assert panel.repeats.result.checkpoint is not None
