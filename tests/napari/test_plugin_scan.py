"""Scan panel: planted copies among real images come first; a row opens the pair with overlays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_bta._scan_panel import ScanPanel, top_pairs


@pytest.fixture
def planted_folder(tmp_path, bccd_images, dsb_images, read_rgb):
    """Six real images of three kinds plus three planted copies (exact, flipped, cropped)."""
    folder = tmp_path / "scan"
    folder.mkdir()
    sources = [
        bccd_images[3],
        bccd_images[40],
        dsb_images[0],
        dsb_images[1],
        dsb_images[2],
        dsb_images[3],
    ]
    rgbs = {}
    for path in sources:
        rgb = read_rgb(path)
        scale = 160 / max(rgb.shape[:2])
        small = Image.fromarray(rgb).resize(
            (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        )
        small.save(folder / f"{path.stem[:12]}.png")
        rgbs[path.stem[:12]] = np.asarray(small)
    names = list(rgbs)
    Image.fromarray(rgbs[names[0]]).save(folder / "copy_exact.png")
    Image.fromarray(rgbs[names[2]][:, ::-1]).save(folder / "copy_flipped.png")
    h, w = rgbs[names[1]].shape[:2]
    Image.fromarray(rgbs[names[1]][h // 10 :, w // 10 :]).save(folder / "copy_cropped.png")
    planted = {
        frozenset((str(folder / f"{names[0]}.png"), str(folder / "copy_exact.png"))),
        frozenset((str(folder / f"{names[2]}.png"), str(folder / "copy_flipped.png"))),
        frozenset((str(folder / f"{names[1]}.png"), str(folder / "copy_cropped.png"))),
    }
    return folder, planted


def test_top_pairs_sorts_rows_of_any_shape():
    result = SimpleNamespace(
        pairs=[
            {"path_a": "a", "path_b": "b", "score": 0.2, "same": False},
            SimpleNamespace(path_a="c", path_b="d", score=0.9, same=True),
        ]
    )
    rows = top_pairs(result, 5)
    assert [r["path_a"] for r in rows] == ["c", "a"] and rows[0]["same"] is True
    assert top_pairs(SimpleNamespace(pairs=[]), 5) == []
    verified = SimpleNamespace(path_a="e", path_b="f", score=0.1, same=True, verified=True)
    result.pairs.append(verified)
    assert [r["path_a"] for r in top_pairs(result, 5)] == ["e", "c", "a"]


def test_scan_panel_lists_planted_pairs_first_and_opens_them(
    make_napari_viewer, qtbot, planted_folder, cosine_model, held_model, monkeypatch, tmp_path
):
    pytest.importorskip("bta_core.scan")
    monkeypatch.setenv("BTA_CACHE_DIR", str(tmp_path / "cache"))
    folder, planted = planted_folder
    held_model(cosine_model)
    viewer = make_napari_viewer()
    panel = ScanPanel(viewer)
    viewer.window.add_dock_widget(panel)
    worker = panel.run(folder=str(folder))
    assert worker is not None and not panel._run.enabled
    with qtbot.waitSignal(worker.finished, timeout=90_000):
        pass
    top = {frozenset((p["path_a"], p["path_b"])) for p in panel.pairs[: len(planted)]}
    assert top == planted
    assert all(p["verified"] for p in panel.pairs[: len(planted)])  # keypoints confirm them
    assert panel._table.native.rowCount() == len(panel.pairs) >= len(planted)

    worker = panel.open_row(0)
    with qtbot.waitSignal(worker.finished, timeout=90_000):
        pass
    a, b = viewer.layers[0], viewer.layers[1]
    assert a.translate[1] == 0 and b.translate[1] > a.data.shape[1]  # B opens beside A
    assert f"BTA heatmap: {a.name}" in viewer.layers and f"BTA match: {b.name}" in viewer.layers
    assert "vs" in panel._verdict.value
