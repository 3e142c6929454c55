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

    def get_or_load_default(self, device: str = "auto") -> Any:
        """The held model, loading the bundled default model when none is loaded yet."""
        if self.model is None:
            from ._compat import prepare_torch_import

            prepare_torch_import()
            from bta_core.checkpoint import load_checkpoint
            from bta_core.device import get_device

            self.set(load_checkpoint(None, device=get_device(device)))
        return self.model


MODEL = ModelHolder()
"""The session-wide model holder every panel reads."""
