"""Model panel: load a checkpoint or the bundled default model on a chosen device."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from ._compat import prepare_torch_import
from ._state import MODEL
from ._workers import Progress, WorkerControls

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # same as bta_core.device.DEVICE_CHOICES


def load_model(checkpoint: str | Path | None, device: str = "auto") -> Any:
    """Load ``checkpoint`` (None or "" = bundled default) on ``device`` and share it with all panels."""
    prepare_torch_import()
    from bta_core.checkpoint import load_checkpoint
    from bta_core.device import get_device

    path = str(checkpoint) if checkpoint not in (None, "", ".") else None
    model = load_checkpoint(path, device=get_device(device))
    MODEL.set(model, getattr(model, "checkpoint_path", path))
    return model


def load_job(
    checkpoint: str | None, device: str, stop: threading.Event | None = None
) -> Generator[Progress, None, Any]:
    """Generator worker around ``load_checkpoint`` (building a backbone can take seconds)."""
    prepare_torch_import()
    from bta_core.checkpoint import load_checkpoint
    from bta_core.device import get_device

    yield Progress(0, 1, {"stage": "loading"})
    return load_checkpoint(checkpoint or None, device=get_device(device))


class ModelPanel(Container):
    """Choose a checkpoint (or the bundled default) and a device; shows the model in use."""

    def __init__(self, viewer: Any = None) -> None:
        self._viewer = viewer
        self._file = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors", value="")
        self._device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto")
        self._load = PushButton(text="Load checkpoint")
        self._default = PushButton(text="Load bundled default model")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="")
        self._info = Label(value=MODEL.describe())
        super().__init__(
            widgets=[
                self._file,
                self._device,
                self._load,
                self._default,
                self._cancel,
                self._status,
                self._info,
            ]
        )
        self.controls = WorkerControls(self._load, self._cancel, self._status, "Loading model")
        self._load.changed.connect(lambda *_: self.load(str(self._file.value)))
        self._default.changed.connect(lambda *_: self.load(None))
        MODEL.changed.connect(self._update_info)
        self.native.destroyed.connect(lambda *_: self._disconnect())

    def _disconnect(self) -> None:
        self.controls.close()
        MODEL.changed.disconnect(self._update_info)

    def _update_info(self, *_: Any) -> None:
        try:
            self._info.value = MODEL.describe()
        except RuntimeError:  # widget already deleted
            pass

    def load(self, checkpoint: str | None) -> Any:
        """Load ``checkpoint`` (None: bundled default) in a worker; errors become notifications."""
        if checkpoint in ("", "."):
            from napari.utils.notifications import show_error

            show_error("Choose a checkpoint file first, or load the bundled default model")
            return None
        self._default.enabled = False

        def done(model: Any) -> None:
            MODEL.set(model, checkpoint or getattr(model, "checkpoint_path", "bundled default"))

        worker = self.controls.start(load_job, checkpoint, self._device.value, on_return=done)
        if worker is not None:
            worker.finished.connect(lambda: setattr(self._default, "enabled", True))
        else:
            self._default.enabled = True
        return worker
