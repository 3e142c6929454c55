"""bta_core: Barlow Twins Adaptation (BTA) for detecting reused microscopy images.

The core library behind the ``bta-core`` command and the napari-bta plugin. It imports no
napari, Qt or magicgui code.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-bta")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
