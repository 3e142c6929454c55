"""The model shared by all napari-bta panels (one per napari session)."""

from __future__ import annotations

from typing import Any

from psygnal import Signal


class ModelHolder:
    """Holds the loaded ``BTAModel`` and says where it came from; ``changed`` fires on updates."""

    changed = Signal(object)

    def __init__(self) -> None:
        self.model: Any | None = None
        self.source: str | None = None

    def set(self, model: Any, source: str | None = None) -> None:
        """Make ``model`` the one every panel uses; ``source`` is its checkpoint path or a label."""
        self.model = model
        self.source = source or getattr(model, "checkpoint_path", None) or "in-memory model"
        self.changed.emit(model)

    def clear(self) -> None:
        self.model = None
        self.source = None
        self.changed.emit(None)

    def describe(self) -> str:
        """One line for labels: checkpoint, device and threshold, or a hint when none is loaded."""
        if self.model is None:
            return "No model loaded"
        from bta_core.device import describe_device

        cfg = self.model.config
        return (
            f"{self.source}\n{cfg.backbone} @ {cfg.image_size}px, threshold {cfg.threshold:.3f}, "
            f"device: {describe_device(self.model.device)}"
        )


def load_model(
    checkpoint: str | None = None,
    device: str = "auto",
    on_progress: Any = None,
    should_stop: Any = None,
) -> Any:
    """Load ``checkpoint`` (None: the bundled default) on ``device``; call it in a worker thread.

    Imports torch, so it belongs in a worker: loading in the UI thread froze napari for seconds.
    """
    from ._compat import prepare_torch_import

    prepare_torch_import()
    from bta_core.checkpoint import load_checkpoint
    from bta_core.device import get_device

    if on_progress is not None:
        on_progress(0, 1, {"stage": "loading model"})
    model = load_checkpoint(checkpoint or None, device=get_device(device))
    if on_progress is not None:
        on_progress(1, 1, {"stage": "model loaded"})
    return model


MODEL = ModelHolder()
"""The session-wide model holder every panel reads."""


def adopt_default(model: Any) -> None:
    """Share a default model a worker loaded, unless the user loaded another one meanwhile."""
    if model is not None and MODEL.model is None:
        MODEL.set(model, "bundled default model")
