"""Model panel: load a checkpoint in a worker, share it, report failures as notifications."""

from __future__ import annotations

import logging

import pytest

from napari_bta._state import MODEL


def test_model_panel_loads_checkpoint_and_shows_device(
    make_napari_viewer, qtbot, open_panel, tiny_model, tmp_path
):
    from bta_core.checkpoint import save_checkpoint

    path = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    viewer = make_napari_viewer()
    panel = open_panel(viewer, "Model")
    panel._device.value = "cpu"
    worker = panel.load(str(path))
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    try:
        assert MODEL.model is not None and MODEL.source == str(path)
        assert "device: cpu" in panel._info.value and "64px" in panel._info.value
    finally:
        MODEL.clear()
    assert panel._info.value == "No model loaded"


def _panel_logs(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "napari_bta" and "failed" in r.getMessage()]


def test_model_panel_reports_a_bad_checkpoint(
    make_napari_viewer, qtbot, open_panel, tmp_path, monkeypatch, caplog
):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer = make_napari_viewer()
    panel = open_panel(viewer, "Model")
    assert panel.load(str(bad)) is not None
    # this fails at once, maybe before a waitSignal could connect: wait for the panel instead
    qtbot.waitUntil(lambda: not panel.controls.busy, timeout=60_000)
    assert MODEL.model is None and "failed" in panel._status.value
    assert errors and "broken.safetensors" in errors[0]
    assert panel._load.enabled
    # a bad input (CheckpointError, a RuntimeError the worker re-raises as WorkError) is logged
    # as one line, like the CLI prints it: no traceback
    [record] = _panel_logs(caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "broken.safetensors" in record.getMessage()


def test_model_panel_logs_a_bug_with_its_traceback(
    make_napari_viewer, qtbot, open_panel, monkeypatch, caplog
):
    def broken(*_args, **_kwargs):
        raise KeyError("a bug, not a bad input")

    monkeypatch.setattr("napari_bta._model_panel.load_model", broken)
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda *_: None)
    panel = open_panel(make_napari_viewer(), "Model")
    assert panel.load(None) is not None
    qtbot.waitUntil(lambda: not panel.controls.busy, timeout=60_000)
    [record] = _panel_logs(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.mark.parametrize("value", ["", "."])
def test_model_panel_needs_a_file(make_napari_viewer, open_panel, value, monkeypatch):
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    panel = open_panel(make_napari_viewer(), "Model")
    assert panel.load(value) is None and errors
    assert panel._status.value == errors[0]  # said in the panel as well as in a notification
