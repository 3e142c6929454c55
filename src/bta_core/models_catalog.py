"""The catalogue of models: the bundled default and the checkpoints cached on this machine."""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import DEFAULT_MODEL_PATH, CheckpointError, read_config


def models_dir() -> Path:
    """Folder of user models: ``$BTA_MODELS_DIR`` or ``~/.cache/napari-bta/models``."""
    env = os.environ.get("BTA_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "napari-bta" / "models"


def list_models(extra_dirs: list[str | os.PathLike] | None = None) -> list[dict]:
    """One entry per readable checkpoint: name, path, origin, backbone, threshold, metrics."""
    candidates: list[tuple[str, Path]] = []
    if DEFAULT_MODEL_PATH.exists():
        candidates.append(("bundled", DEFAULT_MODEL_PATH))
    folders = [("cached", models_dir())] + [("--dir", Path(d)) for d in extra_dirs or []]
    for origin, folder in folders:
        if folder.is_dir():
            candidates += [(origin, p) for p in sorted(folder.glob("*.safetensors"))]
    out = []
    for origin, path in candidates:
        try:
            cfg = read_config(path)
        except CheckpointError as exc:
            out.append({"name": path.stem, "path": str(path), "origin": origin, "error": str(exc)})
            continue
        recipe = cfg.recipe or {}
        out.append(
            {
                "name": "default" if path == DEFAULT_MODEL_PATH else path.stem,
                "path": str(path),
                "origin": origin,
                "size_mb": round(path.stat().st_size / 1e6, 1),
                "backbone": cfg.backbone,
                "backbone_weights": cfg.backbone_weights or "registry default",
                "image_size": cfg.image_size,
                "mode": recipe.get("mode"),
                "views": recipe.get("views"),
                "epochs": recipe.get("epochs"),
                "threshold": cfg.threshold,
                "calibration": cfg.calibration,
                "metrics": cfg.metrics,
            }
        )
    return out
