"""Train panel: train a BTA model on a folder or on chosen layers, then use it in every panel."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    RadioButtons,
    Select,
    SpinBox,
)

from ._compat import prepare_torch_import
from ._state import MODEL
from ._workers import Progress, WorkerControls, run_with_progress

BACKBONE_CHOICES = ("efficientnet-lite0", "resnet50-barlowtwins", "resnet18", "resnet50")


def export_layers(layers: Sequence[Any], folder: str | Path) -> list[Path]:
    """Write every plane of ``layers`` as an 8-bit RGB PNG into ``folder`` (training input)."""
    from PIL import Image

    from bta_core.imageio import to_uint8

    from ._compare import layer_items

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in layers:
        for k, item in enumerate(layer_items([layer])):
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in layer.name)
            path = folder / f"{safe}_{k:03d}.png"
            Image.fromarray(to_uint8(item.rgb)).save(path)
            paths.append(path)
    return paths


def train_job(
    settings: dict, stop: threading.Event | None = None
) -> Generator[Progress, None, tuple[Path, Any]]:
    """Generator worker: ``bta_core.train.train`` with progress, then load the saved checkpoint."""
    prepare_torch_import()
    from bta_core.checkpoint import load_checkpoint
    from bta_core.device import get_device
    from bta_core.train import TrainConfig, train

    config = TrainConfig(**settings)
    path = yield from run_with_progress(train, config, stop=stop)
    yield Progress(1, 1, {"stage": "loading trained model"})
    return Path(path), load_checkpoint(path, device=get_device(settings.get("device", "auto")))


class TrainPanel(Container):
    """Settings for a training run, Run/Cancel, live progress and loss."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = viewer
        self._source = RadioButtons(label="Train on", choices=["folder", "layers"], value="folder")
        self._folder = FileEdit(label="Folder", mode="d", value="")
        self._layers = Select(label="Layers", choices=self._image_layer_names, allow_multiple=True)
        self._mode = ComboBox(label="Mode", choices=["bta", "combined"], value="bta")
        self._views = ComboBox(label="Views", choices=["paper", "reuse"], value="reuse")
        self._backbone = ComboBox(
            label="Backbone", choices=list(BACKBONE_CHOICES), value="efficientnet-lite0"
        )
        self._epochs = SpinBox(label="Epochs", min=1, max=1000, value=5)
        self._head_epochs = SpinBox(label="Head epochs (bta)", min=1, max=1000, value=20)
        self._batch = SpinBox(label="Batch size", min=2, max=1024, value=32)
        self._size = SpinBox(label="Image size", min=32, max=1024, step=32, value=224)
        self._out = FileEdit(
            label="Save to", mode="w", filter="*.safetensors", value="bta-model.safetensors"
        )
        self._device = ComboBox(
            label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto"
        )
        self._run = PushButton(text="Train")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="")
        super().__init__(
            widgets=[
                self._source,
                self._folder,
                self._layers,
                self._mode,
                self._views,
                self._backbone,
                self._epochs,
                self._head_epochs,
                self._batch,
                self._size,
                self._out,
                self._device,
                self._run,
                self._cancel,
                self._status,
            ]
        )
        self.controls = WorkerControls(self._run, self._cancel, self._status, "Training")
        self.checkpoint: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._run.changed.connect(self.run)
        self._source.changed.connect(self._toggle_source)
        self._mode.changed.connect(self._toggle_source)
        self._toggle_source()
        for event in ("inserted", "removed"):
            getattr(viewer.layers.events, event).connect(lambda *_: self._layers.reset_choices())
        self.native.destroyed.connect(lambda *_: self.controls.close())

    def _image_layer_names(self, *_: Any) -> list[str]:
        from napari.layers import Image

        return [ly.name for ly in self._viewer.layers if isinstance(ly, Image)]

    def _toggle_source(self, *_: Any) -> None:
        by_folder = self._source.value == "folder"
        self._folder.visible = by_folder
        self._layers.visible = not by_folder
        self._head_epochs.visible = self._mode.value == "bta"

    def settings(self) -> dict:
        """The ``TrainConfig`` fields chosen in the panel (layers are exported to a temp folder)."""
        if self._source.value == "layers":
            names = list(self._layers.value)
            if not names:
                raise ValueError("choose the layers to train on")
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-bta-train-")
            export_layers([self._viewer.layers[n] for n in names], self._tmp.name)
            data = [self._tmp.name]
        else:
            folder = str(self._folder.value)
            if folder in ("", ".") or not Path(folder).is_dir():
                raise ValueError(f"choose a folder of images to train on (got {folder!r})")
            data = [folder]
        return {
            "data": data,
            "mode": self._mode.value,
            "views": self._views.value,
            "backbone": self._backbone.value,
            "epochs": int(self._epochs.value),
            "head_epochs": int(self._head_epochs.value),
            "batch_size": int(self._batch.value),
            "image_size": int(self._size.value),
            "out": str(self._out.value),
            "device": self._device.value,
            "limit": None,
            "quiet": True,
        }

    def run(self, *_: Any, **overrides: Any) -> Any:
        """Start training in a worker; ``overrides`` replace settings (tests, scripts)."""
        from napari.utils.notifications import show_error

        try:
            settings = {**self.settings(), **overrides}
        except Exception as exc:
            show_error(f"Cannot train: {exc}")
            return None
        return self.controls.start(train_job, settings, on_return=self._done)

    def _done(self, value: tuple[Path, Any]) -> None:
        from napari.utils.notifications import show_info

        path, model = value
        self.checkpoint = path
        MODEL.set(model, str(path))
        show_info(f"Trained model saved to {path} and loaded")
