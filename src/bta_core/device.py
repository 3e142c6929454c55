"""Pick the torch device: cuda > mps > cpu, or the one the user names; bf16 autocast on CUDA.

torch is imported inside the functions, so the device choices can be read (by a CLI parser or
the napari panel) without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
"""The one list of device names offered by every command and panel."""


def get_device(name: str = "auto") -> torch.device:
    """Return a torch device for ``name`` ("auto", "cpu", "cuda", "cuda:1", "mps").

    "auto" picks CUDA when available, then Apple's MPS, then the CPU. Asking for a device
    that is not available raises ``RuntimeError`` with a clear message.
    """
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("device 'mps' requested but Apple MPS is not available")
    if not (name == "cpu" or name == "mps" or name.startswith("cuda")):
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """Human-readable device description, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere: the one mixed-precision rule of inference."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
