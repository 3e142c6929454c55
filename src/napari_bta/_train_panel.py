"""Train panel: train a BTA model on a folder or on chosen layers, then use it in every panel.

Defaults suit a laptop CPU (128 px, batch 16, a few epochs); the checkpoint goes to a folder in
the user's home, never the working folder. Cancel stops at the next optimisation step; the
core then saves the model so far, and the panel says where.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit, PushButton, RadioButtons, Select, SpinBox

from bta_core.device import DEVICE_CHOICES

from ._compat import prepare_torch_import
from ._layers import is_overlay
from ._panel import Panel, tip
from ._state import MODEL
from ._workers import Cancelled, Progress, run_with_progress

if TYPE_CHECKING:
    import napari

BACKBONE_CHOICES = ("efficientnet-lite0", "resnet50-barlowtwins", "resnet18", "resnet50")
MODELS_DIR = Path.home() / "napari-bta" / "models"
"""Where the panel saves trained models unless the user picks another file."""


def default_output() -> Path:
    """A new file name under ``MODELS_DIR`` (dated, so a run never overwrites an earlier one)."""
    return MODELS_DIR / f"bta-model-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"


def export_items(items: Sequence[Any], folder: str | Path) -> list[Path]:
    """Write compare items (layer planes) as 8-bit RGB PNGs into ``folder`` (training input)."""
    from PIL import Image

    from bta_core.imageio import to_uint8

    from ._planes import to_rgb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, item in enumerate(items):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in item.name)
        path = folder / f"{k:04d}_{safe[:60]}.png"
        Image.fromarray(to_uint8(to_rgb(item.data, item.is_rgb))).save(path)
        paths.append(path)
    return paths


def export_layers(layers: Sequence[Any], folder: str | Path) -> list[Path]:
    """Write every plane of ``layers`` as an 8-bit RGB PNG into ``folder``."""
    from ._planes import layer_items

    return export_items([it for layer in layers for it in layer_items([layer])], folder)


def count_images(data: Sequence[str]) -> int:
    """How many training images ``data`` (folders or split files) holds (0 when none)."""
    from bta_core.data import list_records

    try:
        return len(list_records(data))
    except ValueError:  # "no images found in ..."
        return 0


def train_job(
    settings: dict, planes: Sequence[Any] = (), stop: threading.Event | None = None
) -> Generator[Progress, None, tuple[Path, Any]]:
    """Generator worker: ``bta_core.training.loop.train`` with progress, then load the saved checkpoint.

    ``planes`` (layer planes chosen in the panel) are first written as PNGs to the data folder.

    A cancelled run raises ``Cancelled`` whose message says whether and where the model so far
    was saved.
    """
    prepare_torch_import()
    from bta_core.checkpoint import load_checkpoint
    from bta_core.device import get_device
    from bta_core.training.config import TrainConfig
    from bta_core.training.loop import train

    yield Progress(0, 1, {"stage": "reading images"})
    if planes:
        export_items(planes, settings["data"][0])
    n = count_images(settings["data"])
    where = ", ".join(map(str, settings["data"]))
    if n < 2:
        raise ValueError(
            f"training needs at least 2 images (it learns by contrasting images); found {n} in {where}"
        )
    out = Path(settings["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    before = out.stat().st_mtime if out.exists() else None
    config = TrainConfig(**settings)
    try:
        path = yield from run_with_progress(train, config, stop=stop)
    except Cancelled as exc:
        saved = out.exists() and (before is None or out.stat().st_mtime > before)
        if saved:
            raise Cancelled(
                f"the model so far was saved to {out}; train again with the same file to go on"
            ) from exc
        raise Cancelled("stopped before the first training step; nothing was saved") from exc
    yield Progress(1, 1, {"stage": "loading trained model"})
    return Path(path), load_checkpoint(path, device=get_device(settings.get("device", "auto")))


class TrainPanel(Panel):
    """Settings for a training run, Train/Cancel, live progress and loss."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._source = tip(
            RadioButtons(label="Train on", choices=["folder", "layers"], value="folder"),
            "A folder of images, or image layers open in napari (each plane becomes an image)",
        )
        self._folder = tip(
            FileEdit(label="Folder", mode="d", value=""), "Folder of training images (recursive)"
        )
        self._layers = tip(
            Select(label="Layers", choices=self._image_layer_names, allow_multiple=True),
            "Image layers to train on (the plugin's result layers are not offered)",
        )
        self._mode = tip(
            ComboBox(label="Mode", choices=["bta", "combined"], value="bta"),
            "bta: projector, then similarity head; combined: one joint stage",
        )
        self._views = tip(
            ComboBox(label="Views", choices=["paper", "reuse"], value="reuse"),
            "reuse: rotations, flips, crops, noise, JPEG and contrast changes as reused figures "
            "undergo; paper: the Barlow Twins paper's views",
        )
        self._backbone = tip(
            ComboBox(label="Backbone", choices=list(BACKBONE_CHOICES), value="efficientnet-lite0"),
            "Pretrained feature extractor (efficientnet-lite0 is the fastest on a CPU)",
        )
        self._epochs = tip(
            SpinBox(label="Epochs", min=1, max=1000, value=3), "Passes over the images (stage 1)"
        )
        self._head_epochs = tip(
            SpinBox(label="Head epochs", min=1, max=1000, value=5),
            "Passes for the similarity head (bta mode)",
        )
        self._batch = tip(
            SpinBox(label="Batch size", min=2, max=1024, value=16),
            "Images per step; smaller uses less memory",
        )
        self._size = tip(
            SpinBox(label="Image size", min=32, max=1024, step=32, value=128),
            "Side of the square model input in pixels; smaller is faster",
        )
        self._out = tip(
            FileEdit(label="Save to", mode="w", filter="*.safetensors", value=default_output()),
            "Checkpoint file to write (default: a new file in ~/napari-bta/models)",
        )
        self._device = tip(
            ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto"),
            "auto: CUDA, then Apple MPS, then the CPU",
        )
        self._run = tip(PushButton(text="Train"), "Train in the background")
        self.setup(
            [
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
            ],
            [self._run],
            "Training",
        )
        self._cancel.tooltip = "Stop at the next step; the model so far is saved"
        self._layers.native.setMaximumHeight(120)
        self.checkpoint: Path | None = None
        self.planes: list[Any] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._run.changed.connect(lambda *_: self.run())
        self._source.changed.connect(self._toggle_source)
        self._mode.changed.connect(self._toggle_source)
        self._toggle_source()
        self.connect_layer_events(lambda *_: self._layers.reset_choices())

    def _image_layer_names(self, *_: Any) -> list[str]:
        from napari.layers import Image

        return [
            ly.name for ly in self._viewer.layers if isinstance(ly, Image) and not is_overlay(ly)
        ]

    def _toggle_source(self, *_: Any) -> None:
        by_folder = self._source.value == "folder"
        self._folder.visible = by_folder
        self._layers.visible = not by_folder
        self._head_epochs.visible = self._mode.value == "bta"

    def settings(self) -> dict:
        """The ``TrainConfig`` fields chosen in the panel (layers are exported to a temp folder)."""
        if self._source.value == "layers":
            from ._planes import layer_items

            names = list(self._layers.value)
            if not names:
                raise ValueError("choose the layers to train on")
            self.planes = [
                it for n in names for it in layer_items([self._viewer.layers[n]], max_planes=None)
            ]
            if len(self.planes) < 2:
                raise ValueError(
                    "training needs at least 2 images; the chosen layers hold "
                    f"{len(self.planes)} plane (choose more layers or a stack)"
                )
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-bta-train-")
            data = [self._tmp.name]
        else:
            folder = str(self._folder.value)
            if folder in ("", ".") or not Path(folder).is_dir():
                raise ValueError(f"choose a folder of images to train on (got {folder!r})")
            data = [folder]
            self.planes = []
        out = str(self._out.value)
        if out in ("", "."):
            out = str(default_output())
        return {
            "data": data,
            "mode": self._mode.value,
            "views": self._views.value,
            "backbone": self._backbone.value,
            "epochs": int(self._epochs.value),
            "head_epochs": int(self._head_epochs.value),
            "batch_size": int(self._batch.value),
            "image_size": int(self._size.value),
            "out": str(Path(out).expanduser().resolve()),
            "device": self._device.value,
            "split": None,
            "limit": None,
            "quiet": True,
        }

    def run(self, **overrides: Any) -> Any:
        """Start training in a worker; ``overrides`` replace settings (tests, scripts)."""
        from napari.utils.notifications import show_error

        try:
            settings = {**self.settings(), **overrides}
        except Exception as exc:
            show_error(f"Cannot train: {exc}")
            self._status.value = f"Cannot train: {exc}"
            return None
        return self.controls.start(
            train_job, settings, self.planes, on_return=self._done, on_cancel=self._cancelled
        )

    def _done(self, value: tuple[Path, Any]) -> None:
        from napari.utils.notifications import show_info

        path, model = value
        self.checkpoint = path
        MODEL.set(model, str(path))
        from bta_core.calibration import probability_mapping

        note = ""
        if probability_mapping(model.config.calibration) is None:
            note = (
                f"; not calibrated yet (threshold {model.config.threshold:g}, P = raw score): "
                f"run bta-core calibrate {path} VAL_FOLDER before trusting its verdicts"
            )
        self._status.value = f"Training: done; saved to {path} and loaded in every panel{note}"
        self._status.tooltip = str(path)
        show_info(f"Trained model saved to {path} and loaded{note}")
        self._out.value = default_output()  # the next run writes a new file

    def _cancelled(self, exc: Cancelled) -> None:
        from napari.utils.notifications import show_info

        self._status.value = f"Training cancelled: {exc}"
        show_info(f"Training cancelled: {exc}")
