"""What ``--resume`` needs besides the checkpoint: the training state file (``OUT.state``).

The state is a safetensors file (no pickle) holding the trained modules' tensors, the
optimizer's tensors and, as JSON metadata, the stage, epoch, recipe and optimizer scalars.
An in-memory snapshot of the weights and optimizer at the start of an epoch lets an
interrupted epoch be saved as the state it started from.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import atomic_write, remove_stale_temps, save_checkpoint

if TYPE_CHECKING:
    from ..model import BTAModel
    from .config import TrainConfig


def state_path(out: str | os.PathLike) -> Path:
    """The training state saved next to checkpoint ``out``."""
    return Path(str(out) + ".state")


def remove_stale_outputs(out: str | os.PathLike) -> None:
    """Remove temp files of the checkpoint and its state left by a run killed while writing."""
    for target in (Path(out), state_path(out)):
        remove_stale_temps(target)


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """The optimizer's state as (tensors named ``prefix.param.name``, JSON-ready rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            key = f"{prefix}.{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict, meta: dict) -> None:
    """Load what :func:`flatten_optimizer` returned back into ``opt``."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


RESUME_FREE = frozenset(
    {"out", "resume", "quiet", "device", "save_every", "compile", "init_projector"}
)
"""Options that may differ between a run and its ``--resume``: they do not change the result
(``init_projector`` only seeds a fresh run; the saved state replaces it). ``epochs`` and
``head_epochs`` are compared through the stages they give (``--epochs 200`` = the default)."""
_BY_STAGES = frozenset({"epochs", "head_epochs"})


def _absolute(paths) -> list[str] | None:
    if paths is None:
        return None
    return [os.path.normpath(os.path.abspath(p)) for p in paths]


def _flag(name: str, value) -> str:
    flag = "--" + name.rstrip("_").replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if isinstance(value, list):
        value = " ".join(map(str, value))
    return f"{flag} {value}"


def check_resume_options(path: Path, cfg: TrainConfig) -> None:
    """Refuse ``--resume`` with options that differ from the interrupted run's, naming each one.

    A changed number of epochs, image size, data or backbone would silently change the learning-
    rate schedule or fail deep inside PyTorch; the run must be resumed as it was started."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            saved = json.loads(fh.metadata()["state"])["config"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: unreadable training state ({exc}); run without --resume"
        ) from exc
    from .config import TrainConfig, stages_text

    now = asdict(cfg)
    now["data"], saved["data"] = _absolute(now["data"]), _absolute(saved.get("data"))
    if now.get("backbone_weights") and saved.get("backbone_weights"):  # however spelled
        now["backbone_weights"] = _absolute([now["backbone_weights"]])[0]
        saved["backbone_weights"] = _absolute([saved["backbone_weights"]])[0]
    skip = RESUME_FREE | _BY_STAGES
    diff = [k for k in now if k not in skip and k in saved and saved[k] != now[k]]
    was = [_flag(k, saved[k]) for k in diff]
    asked = [_flag(k, now[k]) for k in diff]
    try:
        saved_stages = TrainConfig(**{k: v for k, v in saved.items() if k in now}).stages()
    except (TypeError, ValueError):
        saved_stages = None
    if saved_stages is not None and saved_stages != cfg.stages():
        was.append("stages " + stages_text(saved_stages))
        asked.append("stages " + stages_text(cfg.stages()))
    if was:
        raise ValueError(
            f"{path}: the interrupted run was started with {', '.join(was)}; this one asks for "
            f"{', '.join(asked)}. "
            "Resume with the same options, or start afresh without --resume"
        )


def save_training_state(
    model: BTAModel,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    stage: int,
    epoch: int,
    partial: bool,
) -> None:
    """Checkpoint (usable model) plus the optimizer/progress state needed by ``--resume``."""
    from safetensors.torch import save_file

    save_checkpoint(model, cfg.out, extra_meta={"training": {"stage": stage, "epoch": epoch}})
    tensors, opt_meta = flatten_optimizer(opt, "optim")
    for prefix, module in (
        ("projector", model.projector),
        ("head", model.head),
        ("backbone", model.backbone),
    ):
        if prefix == "backbone" and not model.config.backbone_in_checkpoint:
            continue
        for k, v in module.state_dict().items():
            tensors[f"model.{prefix}.{k}"] = v.detach().cpu().contiguous().clone()
    meta = {
        "stage": stage,
        "epoch": epoch,
        "partial": partial,
        "config": {**asdict(cfg), "data": _absolute(cfg.data)},  # resumable from anywhere
        "optimizer": opt_meta,
    }
    atomic_write(
        state_path(cfg.out),
        lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}),
    )


def load_training_state(model: BTAModel, path: Path) -> tuple[dict, dict]:
    """Restore model tensors from a state file; returns (meta, all tensors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
    tensors = load_file(str(path))
    for prefix, module in (
        ("projector", model.projector),
        ("head", model.head),
        ("backbone", model.backbone),
    ):
        sub = {
            k[len(f"model.{prefix}.") :]: v
            for k, v in tensors.items()
            if k.startswith(f"model.{prefix}.")
        }
        if sub:
            module.load_state_dict(sub)
    return meta, tensors


def epoch_snapshot(model: BTAModel, opt: torch.optim.Optimizer) -> dict:
    """Copies of the trained weights and optimizer state at the start of an epoch."""
    parts = {"projector": model.projector, "head": model.head}
    if any(p.requires_grad for p in model.backbone.parameters()):
        parts["backbone"] = model.backbone
    return {
        "modules": {
            name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in parts.items()
        },
        "opt": copy.deepcopy(opt.state_dict()),
    }


def restore_snapshot(model: BTAModel, opt: torch.optim.Optimizer, snapshot: dict) -> None:
    """Put the weights and optimizer state of :func:`epoch_snapshot` back."""
    for name, state in snapshot["modules"].items():
        getattr(model, name).load_state_dict(state)
    opt.load_state_dict(snapshot["opt"])
