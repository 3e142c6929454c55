"""Compare panel: the core's verdict on real images, overlays on the right plane and units."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_bta._compare import layer_items, to_rgb
from napari_bta._layers import unwrap
from napari_bta._overlays import Source, show_pair


def test_layer_items_from_layers_and_from_one_stack(make_napari_viewer, rotated_crop):
    viewer = make_napari_viewer()
    a, b = rotated_crop
    layers = [viewer.add_image(a, name="A"), viewer.add_image(b, name="B")]
    items = layer_items(layers, convert=True)
    assert [it.name for it in items] == ["A", "B"]
    assert items[0].rgb.dtype == np.float32 and items[0].rgb.shape == a.shape
    stack = viewer.add_image(np.moveaxis(a, -1, 0).astype(np.uint16))
    planes = layer_items([stack])
    assert [p.index for p in planes] == [(0,), (1,), (2,)] and planes[0].rgb is None  # lazy
    assert [p.name for p in planes] == [f"{stack.name}[plane={k}]" for k in range(3)]
    # a named axis (as the plugin's reader names Z) names the plane as the CLI does: [z=1]
    zstack = viewer.add_image(np.moveaxis(a, -1, 0), name="Z stack", axis_labels=["z", "y", "x"])
    assert [p.name for p in layer_items([zstack])][1] == "Z stack[z=1]"


def _cli_verdict(capsys, tmp_path, a, b) -> dict:
    """``bta-core score A B --verify --json`` on the two images saved as PNG files."""
    import json

    from PIL import Image

    from bta_core.cli import score

    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    for path, rgb in zip(paths, (a, b), strict=True):
        Image.fromarray(rgb).save(path)
    capsys.readouterr()
    score.main(
        score.get_args_parser().parse_args([*paths, "--verify", "--json", "--device", "cpu"])
    )
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_compare_gives_the_core_verdict_on_a_rotated_crop(
    make_napari_viewer,
    qtbot,
    open_panel,
    wait_idle,
    held_model,
    default_model,
    rotated_crop,
    capsys,
    tmp_path,
):
    """Same verdict as ``assess_pair`` and ``bta-core score --verify``, shown with why."""
    from bta_core.assess import assess_pair

    a, b = rotated_crop
    expected = assess_pair(default_model, to_rgb(a), to_rgb(b)).decision
    cli = _cli_verdict(capsys, tmp_path, a, b)
    held_model(default_model)
    viewer = make_napari_viewer()
    kw = {"scale": (0.5, 0.5), "units": ("um", "um")}
    la = viewer.add_image(a, name="field A", rgb=True, **kw)
    lb = viewer.add_image(b, name="crop B", rgb=True, translate=(0, 400), **kw)
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["field A", "crop B"]
    worker = panel.run()
    assert worker is not None and not panel._run.enabled  # busy until the thread ends
    wait_idle(panel)
    # napari warns "Inconsistent units across layers" exactly when this is None
    assert viewer.layers.extent.units is not None
    decision = panel.result.decision
    assert (decision.verdict, decision.decided_by) == (expected.verdict, expected.decided_by)
    assert (decision.verdict, decision.decided_by) == (cli["verdict"], cli["decided_by"])
    assert decision.verdict == "same" and decision.decided_by == "verified overlap"
    text = panel._verdict.value
    assert f"Verdict: {decision.explain()}" in text and "turned 90 degrees" in text
    assert (
        text.count("Verdict:") == 1 and "decided by" not in text
    )  # said once, in the core's words
    cells = [panel._table.native.item(0, 1).text(), panel._table.native.item(1, 0).text()]
    assert all(c.count(".") == 1 and "e" not in c and len(c.split(".")[1]) == 3 for c in cells)

    heat = viewer.layers["BTA heatmap: field A"]
    assert heat.colormap.name == "inferno" and tuple(heat.contrast_limits) == (0, 1)
    box = viewer.layers["BTA match: crop B"]
    np.testing.assert_allclose(box.translate, lb.translate)
    np.testing.assert_allclose(box.scale, lb.scale)
    aligned = viewer.layers["BTA aligned: crop B -> field A"]
    assert aligned.data.shape[:2] == a.shape[:2] and tuple(aligned.units) == tuple(la.units)
    alpha = np.asarray(aligned.data)[..., 3]  # opaque on B's footprint only, not a black veil
    assert aligned.rgb and 0.05 < alpha.mean() < 0.95 and set(np.unique(alpha)) <= {0.0, 1.0}
    assert aligned.metadata["napari_bta"]["verdict"] == "same"
    n_layers = len(viewer.layers)
    assert panel.run() is not None
    wait_idle(panel)
    assert len(viewer.layers) == n_layers  # a second run updates the same layers


def _match(shape_a, shape_b):
    return SimpleNamespace(
        transform=object(),
        heatmap_source="alignment",
        heatmap_a=np.linspace(0, 1, 12).reshape(3, 4),
        heatmap_b=np.ones((4, 5)),
        box_a=(10, 5, 30, 25),
        box_b=(0, 0, 20, 20),
        confidence=0.9,
    )


def test_overlays_sit_on_the_compared_plane_of_a_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = viewer.add_image(
        np.zeros((5, 60, 80), np.uint16), name="Z stack", scale=(2.0, 0.5, 0.5), units="um"
    )
    a, b = Source("Z stack[1]", stack, (1,), (60, 80)), Source("Z stack[3]", stack, (3,), (60, 80))
    show_pair(viewer, "compare", a, b, _match(a.shape, b.shape), np.ones((60, 80, 3)), {})
    heat_a = viewer.layers["BTA heatmap: Z stack[1]"]
    heat_b = viewer.layers["BTA heatmap: Z stack[3]"]
    assert heat_a.ndim == 3 and heat_a.data.shape[0] == 1
    assert heat_a.translate[0] == pytest.approx(2.0) and heat_b.translate[0] == pytest.approx(6.0)
    np.testing.assert_allclose(heat_a.scale[1:], [10, 10])  # 20 px per tile x 0.5 um
    assert tuple(str(u) for u in heat_a.units) == tuple(str(u) for u in stack.units)
    box = viewer.layers["BTA match: Z stack[3]"]
    assert box.ndim == 3 and box.data[0][0, 0] == 0 and box.translate[0] == pytest.approx(6.0)
    viewer.dims.set_point(0, 2.0)  # plane 1: A's overlays show, B's do not
    assert heat_a._data_view.size > 1 and heat_b._data_view.size <= 1
    # outer tile edges coincide with the image's outer pixel edges
    lo = lambda ly: np.asarray(ly.translate[1:]) - np.asarray(ly.scale[1:]) / 2  # noqa: E731
    np.testing.assert_allclose(lo(heat_a), lo(stack))


def test_channel_overlays_do_not_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    ch0 = viewer.add_image(np.zeros((60, 80)), name="ch0")
    ch2 = viewer.add_image(np.zeros((60, 80)), name="ch2")
    a, b = Source("ch0", ch0, (), (60, 80)), Source("ch2", ch2, (), (60, 80))
    show_pair(viewer, "compare", a, b, _match(a.shape, b.shape), None, {})
    assert viewer.layers["BTA heatmap: ch0"].visible
    assert not viewer.layers["BTA heatmap: ch2"].visible  # same place: B's heatmap starts hidden
    colours = {
        tuple(np.round(viewer.layers[f"BTA match: {n}"].edge_color[0], 2)) for n in ("ch0", "ch2")
    }
    assert len(colours) == 2


def test_a_layer_deleted_mid_compare_is_not_recreated(make_napari_viewer):
    viewer = make_napari_viewer()
    la = viewer.add_image(np.zeros((60, 80)), name="A")
    lb = viewer.add_image(np.zeros((60, 80)), name="B", translate=(0, 100))
    a, b = Source("A", la, (), (60, 80)), Source("B", lb, (), (60, 80))
    viewer.layers.remove("B")  # the user deletes B while the worker runs
    _, notes = show_pair(viewer, "compare", a, b, _match(a.shape, b.shape), None, {})
    assert "B" not in viewer.layers and not any(
        "B" in ly.name.split(": ")[-1] for ly in viewer.layers
    )
    assert notes and "'B'" in notes[0]
    assert "BTA heatmap: A" in viewer.layers


def test_compare_boxes_a_retouched_patch_in_red(
    make_napari_viewer, open_panel, wait_idle, held_model, default_model, bccd_images, read_rgb
):
    """A real smear and its copy with a cell pasted over another: `same`, the explanation says
    B differs locally, and a red box layer sits on A where the patch is."""
    a = read_rgb(bccd_images[7])
    b = a.copy()
    b[200:260, 300:360] = a[100:160, 150:210]
    held_model(default_model)
    viewer = make_napari_viewer()
    viewer.add_image(a, name="original", rgb=True)
    viewer.add_image(b, name="figure", rgb=True, translate=(0, 700))
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["original", "figure"]
    assert panel.run() is not None
    wait_idle(panel)
    assert panel.result.decision.verdict == "same"
    assert "differs locally" in panel._verdict.value
    edits = viewer.layers["BTA local edits: original"]
    (rect,) = edits.data
    (y0, x0), (y1, x1) = rect.min(axis=0), rect.max(axis=0)
    assert x0 < 360 and x1 > 300 and y0 < 260 and y1 > 200


def test_a_new_compare_clears_the_last_table_even_when_cancelled(
    make_napari_viewer,
    open_panel,
    wait_idle,
    held_model,
    default_model,
    rotated_crop,
    read_rgb,
    bccd_images,
):
    """The table on screen always belongs to the items a click assesses: a cancelled Compare of
    other layers used to leave the old table, and a click then assessed a pair of the new
    layers under the old scores (or failed: "Shape of passed values is (3, 3), headers imply
    (2, 2)")."""
    a, b = rotated_crop
    held_model(default_model)
    viewer = make_napari_viewer()
    viewer.add_image(a, name="A", rgb=True)
    viewer.add_image(b, name="B", rgb=True, translate=(0, 700))
    viewer.add_image(read_rgb(bccd_images[20]), name="C", rgb=True, translate=(600, 0))
    panel = open_panel(viewer, "Compare")
    panel._layers.value = ["A", "B", "C"]
    assert panel.run() is not None
    wait_idle(panel)
    assert panel._table.native.rowCount() == 3 and panel.result.names == ["A", "B", "C"]
    panel._layers.value = ["A", "C"]
    assert panel.run() is not None
    # cleared at once, not when the new result arrives
    assert panel.result is None and panel._table.native.rowCount() == 0
    assert panel._verdict.value == ""
    panel._cancel.clicked.emit()
    wait_idle(panel)
    assert "cancelled" in panel._status.value and panel.result is None
    panel._table.native.cellClicked.emit(0, 1)  # nothing left to click: nothing starts
    assert not panel.busy
    # a finished run keeps its items and scores together: a click assesses that pair
    assert panel.run() is not None
    wait_idle(panel)
    assert [it.name for it in panel.items] == panel.result.names == ["A", "C"]


def test_a_rerun_updates_its_overlays_in_place_and_removes_old_ones_in_one_batch(
    make_napari_viewer, open_panel, monkeypatch
):
    """Through napari's proxy (as a panel sees the viewer) every overlay of a re-run was removed
    and added again, one by one: napari collected garbage per removed layer (0.6-0.9 s each
    with torch loaded). Now the same overlays are updated in place, another pair's reuse them
    (renamed), and what that pair has no use for goes in one removal batch."""
    import gc

    viewer = open_panel(make_napari_viewer(), "Compare")._viewer  # the proxy a panel gets
    la = viewer.add_image(np.zeros((60, 80)), name="A")
    lb = viewer.add_image(np.zeros((60, 80)), name="B", translate=(0, 100))
    lc = viewer.add_image(np.zeros((60, 80)), name="C", translate=(100, 0))
    a, b, c = (Source(n, ly, (), (60, 80)) for n, ly in (("A", la), ("B", lb), ("C", lc)))
    first, _ = show_pair(viewer, "compare", a, b, _match(a.shape, b.shape), np.ones((60, 80)), {})
    collections = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *x: collections.append(1) or real_collect(*x))
    match = _match(a.shape, b.shape)
    match.box_a = (20, 10, 40, 30)
    again, _ = show_pair(viewer, "compare", a, b, match, np.ones((60, 80)), {})
    assert not collections  # nothing removed
    assert [ly.name for ly in again] == [ly.name for ly in first]
    assert all(unwrap(x) is unwrap(y) for x, y in zip(again, first, strict=True))
    box = viewer.layers["BTA match: A"]
    assert np.asarray(box.data[0]).min(axis=0).tolist() == [9.5, 19.5]  # the new box
    assert box.shape_type == ["rectangle"] and box.features["confidence"].tolist() == [0.9]
    heat_b = unwrap(viewer.layers["BTA heatmap: B"])
    show_pair(viewer, "compare", a, c, _match(a.shape, c.shape), None, {})
    assert len(collections) == 1  # only the aligned layer (none for this pair): one batch
    assert not [ly.name for ly in viewer.layers if ly.name.endswith(": B") or "-> " in ly.name]
    assert unwrap(viewer.layers["BTA heatmap: C"]) is heat_b  # B's overlays renamed to C's
