"""Train panel: a tiny epoch in a worker while Qt keeps running, Cancel, and the worker bridge."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_bta._workers import Cancelled, Progress, run_with_progress

TINY = {"projector_dim": 64, "limit": 4}


def _slow(n, on_progress=None, should_stop=None):
    for i in range(n):
        if should_stop():
            raise InterruptedError("stopped")
        time.sleep(0.01)
        on_progress(i + 1, n, {"loss": 1.0 / (i + 1)})
    return "done"


def _drain(gen):
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            return seen, stop.value


def test_run_with_progress_yields_returns_and_cancels():
    seen, value = _drain(run_with_progress(_slow, 5))
    steps = [p.step for p in seen if isinstance(p, Progress) and p.total > 0]
    assert value == "done" and steps == [1, 2, 3, 4, 5]
    stop = threading.Event()
    gen = run_with_progress(_slow, 1000, stop=stop)
    next(gen)
    stop.set()
    with pytest.raises(Cancelled):
        _drain(gen)

    def broken(on_progress=None, should_stop=None):
        raise ValueError("bad data")

    with pytest.raises(ValueError, match="bad data"):
        _drain(run_with_progress(broken))


@pytest.fixture
def train_folder(tmp_path, bccd_images):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in bccd_images[:4]:
        shutil.copy(path, folder)
    return folder


def _panel(viewer, open_panel, folder, out, epochs):
    panel = open_panel(viewer, "Train")
    panel._folder.value = str(folder)
    panel._out.value = str(out)
    panel._mode.value = "combined"
    panel._epochs.value = epochs
    panel._batch.value = 2
    panel._size.value = 64
    panel._device.value = "cpu"
    return panel


def test_train_panel_runs_one_epoch_in_a_worker(
    make_napari_viewer, qtbot, open_panel, wait_idle, train_folder, tmp_path
):
    from qtpy.QtCore import QTimer

    from napari_bta._state import MODEL

    viewer = make_napari_viewer()
    panel = _panel(viewer, open_panel, train_folder, tmp_path / "tiny.safetensors", epochs=1)
    ticks_while_busy = []
    timer = QTimer()
    timer.timeout.connect(lambda: panel.busy and ticks_while_busy.append(1))
    timer.start(5)
    try:
        worker = panel.run(**TINY)
        assert worker is not None and not panel._run.enabled and panel._cancel.enabled
        wait_idle(panel)
    finally:
        timer.stop()
    # the Qt event loop kept running while the worker trained (no wall-clock threshold: a
    # fast machine trains in a few ticks; a frozen UI gets at most one, the timer event that
    # was pending when it thawed, since Qt does not queue missed timer ticks)
    assert len(ticks_while_busy) >= 2
    assert panel._run.enabled and not panel._cancel.enabled
    assert panel.checkpoint == tmp_path / "tiny.safetensors" and panel.checkpoint.exists()
    assert MODEL.source == str(panel.checkpoint) and MODEL.model.config.image_size == 64
    assert str(panel.checkpoint) in panel._status.value


def test_train_panel_cancel_says_where_it_saved(
    make_napari_viewer, qtbot, open_panel, wait_idle, train_folder, tmp_path
):
    from napari_bta._state import MODEL

    viewer = make_napari_viewer()
    out = tmp_path / "cancel.safetensors"
    panel = _panel(viewer, open_panel, train_folder, out, epochs=50)
    worker = panel.run(**TINY)
    steps = []

    def on_yield(item):
        if isinstance(item, Progress) and item.total > 0 and "loss" in item.info:
            steps.append(item.step)
            panel._cancel.clicked.emit()  # the user presses Cancel after the first step

    worker.yielded.connect(on_yield)
    wait_idle(panel)
    assert steps and max(steps) <= 3  # stopped long before 50 epochs x 2 steps
    assert "cancelled" in panel._status.value and str(out) in panel._status.value
    assert out.exists()  # the model so far, where the message says
    assert MODEL.model is None and panel._run.enabled


def test_train_defaults_suit_a_cpu_and_save_outside_the_working_folder(
    make_napari_viewer, open_panel, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    viewer = make_napari_viewer()
    panel = open_panel(viewer, "Train")
    assert panel._size.value <= 128 and panel._batch.value <= 16
    assert panel._epochs.value + panel._head_epochs.value <= 10
    out = Path(str(panel._out.value))
    assert out.is_absolute() and Path.home() in out.parents and tmp_path not in out.parents


def test_train_panel_offers_no_overlays_and_explains_one_image(
    make_napari_viewer, open_panel, wait_idle, tmp_path, bccd_images, monkeypatch
):
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer = make_napari_viewer()
    panel = open_panel(viewer, "Train")
    viewer.add_image(np.zeros((32, 32)), name="cells")
    viewer.add_image(
        np.zeros((4, 4)), name="BTA heatmap: cells", metadata={"napari_bta": {"overlay": True}}
    )
    assert panel._layers.choices == ("cells",)
    panel._source.value = "layers"
    panel._layers.value = ["cells"]
    assert panel.run() is None and "at least 2 images" in errors[-1]
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(bccd_images[0], one)
    panel._source.value = "folder"
    panel._folder.value = str(one)
    panel._out.value = str(tmp_path / "one.safetensors")
    assert panel.run() is not None
    wait_idle(panel)
    assert "at least 2 images" in errors[-1] and str(one) in errors[-1]
    assert "Expected more than 1 value" not in panel._status.value


def test_export_layers_writes_each_plane(make_napari_viewer, tmp_path):
    from napari_bta._train_panel import export_layers

    viewer = make_napari_viewer()
    stack = viewer.add_image(
        np.random.default_rng(1).integers(0, 60000, (3, 20, 24), dtype=np.uint16), name="s 1"
    )
    rgb = viewer.add_image(np.zeros((10, 12, 3), np.uint8), name="rgb", rgb=True)
    paths = export_layers([stack, rgb], tmp_path / "out")
    assert len(paths) == 4 and all(p.suffix == ".png" and p.exists() for p in paths)


def test_train_panel_trains_on_the_planes_of_a_layer(
    make_napari_viewer, open_panel, wait_idle, tmp_path, bccd_images, read_rgb
):
    from napari_bta._state import MODEL

    viewer = make_napari_viewer()
    stack = np.stack([read_rgb(p)[:240, :320, 1] for p in bccd_images[:4]])  # real 4-plane stack
    viewer.add_image(stack, name="green planes")
    panel = _panel(viewer, open_panel, tmp_path, tmp_path / "layers.safetensors", epochs=1)
    panel._source.value = "layers"
    panel._layers.value = ["green planes"]
    assert panel.run(**TINY) is not None
    wait_idle(panel)
    assert panel.checkpoint == tmp_path / "layers.safetensors" and panel.checkpoint.exists()
    assert len(list(Path(panel._tmp.name).glob("*.png"))) == 4  # written by the worker
    assert MODEL.source == str(panel.checkpoint)
