"""Workarounds needed before the plugin imports torch inside a running napari."""

from __future__ import annotations

import sys


def _llvm_loaded() -> bool:
    """True when an LLVM shared library is mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="ignore") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:
        return False


def prepare_torch_import() -> None:
    """Keep torch from importing Triton when Mesa's LLVM is already loaded.

    With software OpenGL (Mesa llvmpipe: Xvfb, VNC, remote desktops) napari's canvas loads
    ``libLLVM``; importing Triton afterwards (torchvision pulls it in through ``torch._dynamo``)
    loads a second LLVM and crashes the process. The plugin never compiles kernels, so in that
    case Triton is marked as absent; torch then runs without it. Call before any torch import.
    """
    if "triton" in sys.modules or "torch._dynamo" in sys.modules:
        return
    if _llvm_loaded():
        sys.modules["triton"] = None  # type: ignore[assignment]
