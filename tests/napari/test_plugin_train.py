"""Train panel: a tiny epoch in a worker while Qt keeps running, Cancel, and the worker bridge."""

from __future__ import annotations

import shutil
import threading
import time

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


def _panel(viewer, folder, out, epochs):
    from napari_bta._train_panel import TrainPanel

    panel = TrainPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel._folder.value = str(folder)
    panel._out.value = str(out)
    panel._mode.value = "combined"
    panel._epochs.value = epochs
    panel._batch.value = 2
    panel._size.value = 64
    panel._device.value = "cpu"
    return panel


def test_train_panel_runs_one_epoch_in_a_worker(make_napari_viewer, qtbot, train_folder, tmp_path):
    from qtpy.QtCore import QTimer

    from napari_bta._state import MODEL

    viewer = make_napari_viewer()
    panel = _panel(viewer, train_folder, tmp_path / "tiny.safetensors", epochs=1)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    try:
        worker = panel.run(**TINY)
        assert worker is not None and not panel._run.enabled and panel._cancel.enabled
        with qtbot.waitSignal(worker.finished, timeout=120_000):
            pass
    finally:
        timer.stop()
    assert len(ticks) > 10  # the event loop kept running during training
    assert panel._run.enabled and not panel._cancel.enabled
    assert panel.checkpoint == tmp_path / "tiny.safetensors" and panel.checkpoint.exists()
    assert MODEL.source == str(panel.checkpoint) and MODEL.model.config.image_size == 64
    assert "loss" in panel._status.value or "done" in panel._status.value
    MODEL.clear()


def test_train_panel_cancel_stops_at_next_step(make_napari_viewer, qtbot, train_folder, tmp_path):
    from napari_bta._state import MODEL

    MODEL.clear()
    viewer = make_napari_viewer()
    panel = _panel(viewer, train_folder, tmp_path / "cancel.safetensors", epochs=50)
    worker = panel.run(**TINY)
    steps = []

    def on_yield(item):
        if isinstance(item, Progress) and item.total > 0:
            steps.append(item.step)
            panel._cancel.clicked.emit()  # the user presses Cancel after the first step

    worker.yielded.connect(on_yield)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert steps and max(steps) <= 3  # stopped long before 50 epochs x 2 steps
    assert "cancelled" in panel._status.value
    assert MODEL.model is None and panel._run.enabled


def test_export_layers_writes_each_plane(make_napari_viewer, tmp_path):
    from napari_bta._train_panel import export_layers

    viewer = make_napari_viewer()
    stack = viewer.add_image(
        np.random.default_rng(1).integers(0, 60000, (3, 20, 24), dtype=np.uint16), name="s 1"
    )
    rgb = viewer.add_image(np.zeros((10, 12, 3), np.uint8), name="rgb", rgb=True)
    paths = export_layers([stack, rgb], tmp_path / "out")
    assert len(paths) == 4 and all(p.suffix == ".png" and p.exists() for p in paths)
