"""Checkpoints: safetensors tensors plus the JSON model config, in one file.

The config travels in the safetensors header's metadata (key ``bta_config``), so loading
never unpickles anything. Writes go to a temporary file in the same folder and are renamed
into place (atomic on POSIX and Windows).
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .backbones import (
    BACKBONES,
    BackboneWeightsError,
    build_backbone,
    check_registered_source,
    feature_dim,
)
from .calibration import mapping_problem
from .heads import HEAD_TYPES
from .model import BTAModel, ModelConfig

FORMAT = "napari-bta/1"
DEFAULT_MODEL_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_PATH = DEFAULT_MODEL_DIR / "default.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not fit the model it describes."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic) and
    carries the writer's process id; temporary files of ``path`` left by a killed process are
    removed first (``remove_stale_temps``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
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


TEMP_SUFFIX = ".tmp"
STALE_AFTER_S = 24 * 3600
"""A temporary file without a process id in its name is stale after this long."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` whose writing process no longer runs (or, for names
    without a process id, that are older than ``STALE_AFTER_S``); returns them."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid_text.isdigit():  # written before temp names carried the process id
            try:
                if time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
                    continue
            except OSError:
                continue
        elif int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)  # undecodable file names keep their original bytes

    atomic_write(path, write)


def model_tensors(
    model: BTAModel, half: bool = False, with_backbone: bool | None = None
) -> dict[str, torch.Tensor]:
    """Tensors a checkpoint stores: projector, head, and the backbone when it is not pristine."""
    parts = {"projector": model.projector, "head": model.head}
    if model.config.backbone_in_checkpoint if with_backbone is None else with_backbone:
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
    """Save ``model`` atomically to ``path`` (safetensors with the config in its metadata).

    A backbone whose weights came from anywhere but the registry's own source (a local file)
    is stored in the checkpoint, since a checkpoint may not name a file or URL to fetch.
    """
    config = model.config
    if not config.backbone_in_checkpoint and not _registered_weights(config):
        config = replace(config, backbone_in_checkpoint=True)
    meta = {
        "format": FORMAT,
        "bta_config": json.dumps(config.to_dict()),
        "package_version": __version__,
    }
    if extra_meta:
        meta.update({k: json.dumps(v) for k, v in extra_meta.items()})
    tensors = model_tensors(model, half=half, with_backbone=config.backbone_in_checkpoint)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


MAX_LAYER_WIDTH = 65536
MAX_HEAD_VALUES = 200_000_000
"""Largest projector + head a config may declare (weights), checked before anything is built."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sizes_problem(name: str, v: object, min_len: int) -> str | None:
    if not isinstance(v, list) or len(v) < min_len or len(v) > 16:
        return f"{name} must be a list of {min_len} to 16 layer widths, got {v!r:.80}"
    if not all(_is_int(x) and 1 <= x <= MAX_LAYER_WIDTH for x in v):
        return f"{name} must hold whole numbers from 1 to {MAX_LAYER_WIDTH}, got {v!r:.80}"
    return None


def _registered_weights(config: ModelConfig) -> bool:
    try:
        check_registered_source(config.backbone, config.backbone_weights)
    except ValueError:
        return False
    return True


def config_problem(data: object) -> str | None:
    """What is wrong with a checkpoint's model config (types, ranges, weights source), or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    defaults = ModelConfig().to_dict()
    unknown = sorted(set(data) - set(defaults))
    if unknown:
        return f"unknown keys {unknown[:5]}"
    d = {**defaults, **data}
    if not isinstance(d["backbone"], str) or d["backbone"] not in BACKBONES:
        return f"backbone {d['backbone']!r:.80} is not one of {', '.join(BACKBONES)}"
    if not isinstance(d["backbone_in_checkpoint"], bool):
        return (
            f"backbone_in_checkpoint must be true or false, got {d['backbone_in_checkpoint']!r:.40}"
        )
    weights = d["backbone_weights"]
    if weights is not None and not isinstance(weights, str):
        return f"backbone_weights must be a string or null, got {type(weights).__name__}"
    is_url = isinstance(weights, str) and "://" in weights
    if not d["backbone_in_checkpoint"] or is_url:  # a provenance note is fine when never used
        try:
            check_registered_source(d["backbone"], weights)
        except ValueError as exc:
            return str(exc)
    for name, min_len in (("projector_sizes", 2), ("head_sizes", 1)):
        problem = _sizes_problem(name, d[name], min_len)
        if problem:
            return problem
    head = d.get("head", "paper")
    if head not in HEAD_TYPES:
        return f"head {head!r:.40} is not one of {', '.join(HEAD_TYPES)}"
    if head == "symmetric" and len(d["head_sizes"]) != 2:
        return f"head_sizes of a symmetric head must be [metric size, hidden size], got {d['head_sizes']}"
    if d["projector_sizes"][0] != feature_dim(d["backbone"]):
        return (
            f"projector_sizes starts with {d['projector_sizes'][0]} but {d['backbone']} gives "
            f"{feature_dim(d['backbone'])}-d features"
        )
    p, h = d["projector_sizes"], [2 * d["projector_sizes"][-1], *d["head_sizes"], 1]
    n_weights = sum(a * b for a, b in itertools.pairwise(p)) + sum(
        a * b for a, b in itertools.pairwise(h)
    )
    if n_weights > MAX_HEAD_VALUES:
        return f"projector and head would hold {n_weights:,} weights (limit {MAX_HEAD_VALUES:,})"
    if not _is_int(d["image_size"]) or not 16 <= d["image_size"] <= 4096:
        return f"image_size must be a whole number from 16 to 4096, got {d['image_size']!r:.40}"
    for name in ("mean", "std"):
        v = d[name]
        if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v):
            return f"{name} must be a list of 3 finite numbers, got {v!r:.80}"
    if not all(x > 0 for x in d["std"]):
        return f"std must be positive, got {d['std']}"
    t = d["threshold"]
    if not _is_number(t) or not 0.0 <= t <= 1.0:
        return f"threshold must be a finite number from 0 to 1, got {t!r:.40}"
    for name in ("calibration", "recipe", "metrics"):
        if not isinstance(d[name], dict):
            return f"{name} must be a JSON object, got {type(d[name]).__name__}"
    return mapping_problem(d["calibration"])


def tensors_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with a checkpoint's tensors as numbers (dtype, NaN/inf), or None."""
    for key, value in tensors.items():
        if key.endswith("num_batches_tracked"):
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                return f"tensor {key} must hold a whole number, not {value.dtype}"
            continue
        if not value.is_floating_point():
            return f"tensor {key} has dtype {value.dtype}; weights must be floating point"
        if not bool(torch.isfinite(value).all()):
            return f"tensor {key} holds NaN or infinite values"
        if key.endswith("running_var") and bool((value < 0).any()):
            return f"tensor {key} holds negative variances"
    return None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors."""
    from safetensors import safe_open

    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file (a folder, pipe or device)")
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
            f"{path}: not a napari-bta checkpoint ("
            + (
                f"format {meta['format']!r}"
                if meta.get("format")
                else "a safetensors file without napari-bta's format and config fields"
            )
            + ")"
        )
    try:
        data = json.loads(meta["bta_config"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: model config is not valid JSON ({exc})") from exc
    problem = config_problem(data)
    if problem:
        raise CheckpointError(f"{path}: invalid model config: {problem}")
    try:
        return ModelConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from exc


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
    """Rebuild a ``BTAModel`` from a checkpoint (default: the bundled model), in eval mode.

    Config and tensors are checked before anything is built or downloaded: config types and
    ranges, the backbone's weights source (registered ones only), tensor dtypes (floating
    point), finiteness and shapes. Any problem raises one ``CheckpointError`` naming the file.
    """
    path = resolve_checkpoint(path)
    config = read_config(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: tensors cannot be read ({exc})") from exc
    problem = tensors_problem(tensors)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        backbone = build_backbone(
            config.backbone,
            weights=None if config.backbone_in_checkpoint else config.backbone_weights,
            pretrained=not config.backbone_in_checkpoint,
        )
        model = BTAModel(config, backbone=backbone)
    except (ValueError, BackboneWeightsError) as exc:
        raise CheckpointError(f"{path}: model cannot be built ({exc})") from exc
    parts = {"projector": model.projector, "head": model.head}
    if config.backbone_in_checkpoint:
        parts["backbone"] = model.backbone
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(sub))
        unexpected = sorted(set(sub) - set(expected))
        wrong = [k for k in expected if k in sub and sub[k].shape != expected[k].shape]
        kinds = [
            k
            for k in expected
            if k in sub and sub[k].is_floating_point() != expected[k].is_floating_point()
        ]
        if missing or unexpected or wrong or kinds:
            raise CheckpointError(
                f"{path}: {prefix} tensors do not fit the config "
                f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong[:4]}, "
                f"wrong type {kinds[:4]})"
            )
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in sub.items()})
    model.checkpoint_path = str(path)
    return model.to(torch.device(device)).eval()
