"""Checkpoints: safetensors tensors plus the JSON model config, in one file.

The config travels in the safetensors header's metadata (key ``bta_config``), so loading
never unpickles anything. Writes go to a temporary file in the same folder and are renamed
into place (atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .model import BTAModel, ModelConfig

FORMAT = "napari-bta/1"
DEFAULT_MODEL_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_PATH = DEFAULT_MODEL_DIR / "default.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not fit the model it describes."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def model_tensors(model: BTAModel, half: bool = False) -> dict[str, torch.Tensor]:
    """Tensors a checkpoint stores: projector, head, and the backbone when it is not pristine."""
    parts = {"projector": model.projector, "head": model.head}
    if model.config.backbone_in_checkpoint:
        parts["backbone"] = model.backbone
    tensors = {}
    for prefix, module in parts.items():
        for k, v in module.state_dict().items():
            v = v.detach().cpu().contiguous()
            if half and v.is_floating_point():
                v = v.half()
            tensors[f"{prefix}.{k}"] = v.clone()
    return tensors


def save_checkpoint(
    model: BTAModel, path: str | os.PathLike, half: bool = False, extra_meta: dict | None = None
) -> Path:
    """Save ``model`` atomically to ``path`` (safetensors with the config in its metadata)."""
    meta = {
        "format": FORMAT,
        "bta_config": json.dumps(model.config.to_dict()),
        "package_version": __version__,
    }
    if extra_meta:
        meta.update({k: json.dumps(v) for k, v in extra_meta.items()})
    tensors = model_tensors(model, half=half)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors."""
    from safetensors import safe_open

    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(path, framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The model config stored in a checkpoint."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "bta_config" not in meta:
        raise CheckpointError(
            f"{path}: not a napari-bta checkpoint (format {meta.get('format')!r})"
        )
    try:
        return ModelConfig.from_dict(json.loads(meta["bta_config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: model config cannot be read ({exc})") from exc


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """``path`` itself, or the bundled default model when ``path`` is None or ``"default"``."""
    if path is None or str(path) == "default":
        if not DEFAULT_MODEL_PATH.exists():
            raise CheckpointError(
                f"no checkpoint given and the bundled default model is missing ({DEFAULT_MODEL_PATH})"
            )
        return DEFAULT_MODEL_PATH
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> BTAModel:
    """Rebuild a ``BTAModel`` from a checkpoint (default: the bundled model), in eval mode."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    model = BTAModel(config)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: tensors cannot be read ({exc})") from exc
    parts = {"projector": model.projector, "head": model.head}
    if config.backbone_in_checkpoint:
        parts["backbone"] = model.backbone
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(sub))
        unexpected = sorted(set(sub) - set(expected))
        wrong = [k for k in expected if k in sub and sub[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{path}: {prefix} tensors do not fit the config "
                f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong[:4]})"
            )
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in sub.items()})
    model.checkpoint_path = str(path)
    return model.to(torch.device(device)).eval()
