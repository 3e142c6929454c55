"""napari-bta: find reused microscopy images with a Barlow Twins Adaptation (BTA) model in napari.

Heavy imports (torch, bta_core models) happen inside the widgets' functions and workers, so
loading the plugin keeps napari's start fast.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-bta")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
