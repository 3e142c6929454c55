"""Compare panel: similarity matrix across real layers and overlays for the chosen pair."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_bta._compare import (
    ComparePanel,
    CompareResult,
    Item,
    compare_items,
    layer_items,
    show_pair,
)


def _add_pair(viewer):
    from napari_bta._sample_data import reuse_pair

    return [viewer.add_image(data, **kwargs) for data, kwargs, _ in reuse_pair()]


def _wait(qtbot, worker, timeout=60_000):
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def test_layer_items_from_layers_and_from_one_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = _add_pair(viewer)
    items = layer_items(layers[:2])
    assert [it.name for it in items] == [ly.name for ly in layers[:2]]
    assert items[0].rgb.dtype == np.float32 and items[0].rgb.shape == (192, 256, 3)
    stack = viewer.add_image(
        np.random.default_rng(0).integers(0, 4000, (4, 32, 40), dtype=np.uint16)
    )
    planes = layer_items([stack])
    assert len(planes) == 4 and planes[0].rgb.shape == (32, 40, 3) and planes[0].rgb.max() <= 1


def test_compare_panel_matrix_heatmap_shapes_aligned(
    make_napari_viewer, qtbot, cosine_model, held_model
):
    pytest.importorskip("bta_core.match")
    held_model(cosine_model)
    viewer = make_napari_viewer()
    layers = _add_pair(viewer)[:2]  # field A and the rotated crop of it
    panel = ComparePanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel._layers.value = [ly.name for ly in layers]
    worker = panel.run()
    assert worker is not None and not panel._run.enabled  # Run is disabled while busy
    _wait(qtbot, worker)
    assert panel._run.enabled
    result = panel.result
    assert result.matrix.shape == (2, 2)
    np.testing.assert_allclose(result.matrix, result.matrix.T, atol=1e-5)
    assert result.pair == (0, 1)
    assert result.match is not None and result.match.transform is not None  # reuse localised
    assert "vs" in panel._verdict.value and "threshold" in panel._verdict.value
    table = panel._table.native
    assert table.rowCount() == 2 and table.columnCount() == 2

    a, b = layers[0].name, layers[1].name
    heat = viewer.layers[f"BTA heatmap: {a}"]
    assert heat.colormap.name == "inferno" and heat.blending == "additive"
    assert heat.opacity == pytest.approx(0.5) and tuple(heat.contrast_limits) == (0, 1)
    assert f"BTA heatmap: {b}" in viewer.layers
    shapes = viewer.layers[f"BTA match: {a}"]
    assert len(shapes.data) == 1 and "score" in shapes.features
    aligned = viewer.layers[f"BTA aligned: {b} -> {a}"]
    assert aligned.data.shape[:2] == layers[0].data.shape[:2]
    assert aligned.metadata["napari_bta"]["pair"] == [a, b]
    np.testing.assert_allclose(aligned.translate, layers[0].translate)

    # a second run updates the same layers instead of adding more
    n_layers = len(viewer.layers)
    worker = panel.run()
    _wait(qtbot, worker)
    assert len(viewer.layers) == n_layers


def test_compare_items_without_viewer_gives_matrix(tiny_model, bccd_images, read_rgb):
    items = [Item(p.name, read_rgb(p).astype(np.float32) / 255) for p in bccd_images[:3]]
    result = compare_items(tiny_model, items, pair=(0, 2))
    assert result.matrix.shape == (3, 3) and result.pair == (0, 2)
    assert 0.0 <= result.score <= 1.0


def test_show_pair_places_overlays_on_each_layer(make_napari_viewer):
    """Overlay plumbing with a hand-made localisation result (tile heatmaps, boxes, warp)."""
    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((60, 80)), name="A", scale=(0.5, 0.5))
    b = viewer.add_image(np.zeros((40, 50)), name="B", translate=(0, 100))
    items = [
        Item("A", np.zeros((60, 80, 3), np.float32), a),
        Item("B", np.zeros((40, 50, 3), np.float32), b),
    ]
    match = SimpleNamespace(
        heatmap_a=np.linspace(0, 1, 12).reshape(3, 4),
        heatmap_b=np.ones((4, 5)),
        box_a=(10, 5, 50, 45),
        box_b=(0, 0, 50, 40),
        score=None,
    )
    result = CompareResult(
        ["A", "B"], np.array([[1, 0.8], [0.8, 1]]), (0, 1), 0.5, "ckpt", match, np.ones((60, 80, 3))
    )
    show_pair(viewer, result, items)
    heat = viewer.layers["BTA heatmap: A"]
    np.testing.assert_allclose(heat.scale, [10, 10])  # 20 px per tile x 0.5 scale
    assert heat.metadata["napari_bta"]["checkpoint"] == "ckpt"
    # the tiles' outer edges coincide with the image's outer pixel edges
    lo = lambda ly: np.asarray(ly.translate) - np.asarray(ly.scale) / 2  # noqa: E731
    hi = lambda ly: lo(ly) + np.asarray(ly.data.shape[:2]) * np.asarray(ly.scale)  # noqa: E731
    np.testing.assert_allclose(lo(heat), lo(a))
    np.testing.assert_allclose(hi(heat), hi(a))
    shapes_b = viewer.layers["BTA match: B"]
    np.testing.assert_allclose(shapes_b.translate, [0, 100])
    assert shapes_b.features["score"][0] == pytest.approx(0.8)
    assert viewer.layers["BTA aligned: B -> A"].rgb
    show_pair(viewer, result, items)
    assert len(viewer.layers) == 7
