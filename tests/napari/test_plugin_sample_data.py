"""Sample data ships in the package, is small, and opens through File > Open Sample."""

from __future__ import annotations

import numpy as np

from napari_bta._sample_data import SAMPLE_DIR


def test_sample_files_are_small_and_licensed():
    files = [p for p in SAMPLE_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    names = {p.name for p in files}
    assert {"README.md", "LICENSE-BCCD", "nuclei_3ch.ome.tif", "bccd_a.jpg"} <= names


def test_open_samples_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    pair = viewer.open_sample("napari-bta", "reuse_pair")
    assert len(pair) == 3 and all(ly.rgb for ly in pair)
    assert max(max(ly.data.shape[:2]) for ly in pair) <= 256
    stack = viewer.open_sample("napari-bta", "nuclei_stack")
    assert len(stack) == 3
    assert all(ly.data.dtype == np.uint16 for ly in stack)
    np.testing.assert_allclose(stack[0].scale[-2:], [0.65, 0.65])
