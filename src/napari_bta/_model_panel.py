"""Model panel: load a checkpoint or the bundled default model on a chosen device (in a worker)."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit, Label, PushButton

from bta_core.device import DEVICE_CHOICES

from ._panel import Panel, tip
from ._state import MODEL, load_model
from ._workers import Progress, run_with_progress

if TYPE_CHECKING:
    import napari


def load_job(
    checkpoint: str | None, device: str, stop: threading.Event | None = None
) -> Generator[Progress, None, Any]:
    """Generator worker around ``load_checkpoint`` (torch import and backbone build take seconds)."""
    return (yield from run_with_progress(load_model, checkpoint, device, stop=stop))


class ModelPanel(Panel):
    """Choose a checkpoint (or the bundled default) and a device; shows the model in use."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._file = tip(
            FileEdit(label="Checkpoint", mode="r", filter="*.safetensors", value=""),
            "A .safetensors checkpoint written by bta-core train or the Train panel",
        )
        self._device = tip(
            ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto"),
            "auto: CUDA, then Apple MPS, then the CPU",
        )
        self._load = tip(PushButton(text="Load checkpoint"), "Load the chosen checkpoint")
        self._default = tip(
            PushButton(text="Load bundled default model"),
            "Load the model shipped with the plugin (used when no model is loaded)",
        )
        self._info = tip(Label(value=MODEL.describe()), "The model every panel uses")
        self.setup(
            [self._file, self._device, self._load, self._default, self._info],
            [self._load, self._default],
            "Loading model",
        )
        self._info.native.setWordWrap(True)
        self._fit_height()
        self._load.changed.connect(lambda *_: self.load(str(self._file.value)))
        self._default.changed.connect(lambda *_: self.load(None))
        MODEL.changed.connect(self._update_info)
        self.on_close(lambda: MODEL.changed.disconnect(self._update_info))

    def _fit_height(self) -> None:
        """No taller than its few controls: the dock's spare height goes to the other panels."""
        height = self.sizeHint().height()
        self.setMaximumHeight(height + 40)  # room for a longer status line
        self.setMinimumHeight(min(height, 240))  # its buttons and status, without scrolling

    def _update_info(self, *_: Any) -> None:
        try:
            self._info.value = MODEL.describe()
            self._info.tooltip = f"The model every panel uses: {MODEL.source or 'none'}"
            self._fit_height()
        except RuntimeError:  # widget already deleted
            pass

    def load(self, checkpoint: str | None) -> Any:
        """Load ``checkpoint`` (None: bundled default) in a worker; errors become notifications."""
        if checkpoint in ("", "."):
            from napari.utils.notifications import show_error

            problem = "Choose a checkpoint file first, or load the bundled default model"
            self._status.value = problem  # in the panel too, as the other panels do
            show_error(problem)
            return None

        def done(model: Any) -> None:
            # named as the panels name it when they load the default themselves
            MODEL.set(model, checkpoint or "bundled default model")

        return self.controls.start(load_job, checkpoint, self._device.value, on_return=done)
