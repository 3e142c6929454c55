"""``bta-core models``: the bundled default model and models cached on this machine."""

from __future__ import annotations

import argparse
import json
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
    for folder in [models_dir(), *map(Path, extra_dirs or [])]:
        if folder.is_dir():
            candidates += [("cached", p) for p in sorted(folder.glob("*.safetensors"))]
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


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    p.add_argument(
        "--dir", action="append", default=[], help="also list checkpoints in this folder"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(args: argparse.Namespace) -> int:
    models = list_models(args.dir)
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print(f"no models found (bundled model missing; cache folder {models_dir()})")
        return 1
    for m in models:
        if "error" in m:
            print(f"{m['name']:<20} {m['origin']:<8} unreadable: {m['error']}")
            continue
        metrics = ", ".join(
            f"{k} {v}" for k, v in (m["metrics"] or {}).items() if not isinstance(v, dict)
        )
        print(
            f"{m['name']:<20} {m['origin']:<8} {m['backbone']} {m['image_size']}px, "
            f"{m['mode']}/{m['views']}, threshold {m['threshold']:.3f}, {m['size_mb']} MB\n"
            f"{'':<29}{m['path']}" + (f"\n{'':<29}{metrics}" if metrics else "")
        )
    return 0
