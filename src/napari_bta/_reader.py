"""Reader for TIFF / OME-TIFF stacks: channels as separate layers, Z/T as sliders, physical scale.

``napari_get_reader`` answers ``None`` for anything it cannot read and never raises, so napari can
fall back to other readers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".tif", ".tiff")
LayerData = tuple[Any, dict, str]

# ResolutionUnit tag values -> micrometres per unit (TIFF 6.0: 2 = inch, 3 = centimetre).
_UNIT_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


def napari_get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Return ``read_tiff`` when ``path`` is a readable TIFF file, else ``None``."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        path = str(path)
        if not path.lower().endswith(SUFFIXES) or not os.path.isfile(path):
            return None
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series or len(tif.series[0].shape) < 2:
                return None
        return read_tiff
    except Exception:  # corrupt, truncated, not a TIFF at all: let other readers try
        return None


def _ome_scale(tif: Any) -> dict[str, float]:
    """Physical pixel sizes (micrometres) and time step from OME-XML metadata."""
    import tifffile

    if not tif.ome_metadata:
        return {}
    ome = tifffile.xml2dict(tif.ome_metadata).get("OME", {})
    image = ome.get("Image", {})
    image = image[0] if isinstance(image, list) else image
    pixels = image.get("Pixels", {})
    out = {}
    for axis in "XYZ":
        size = pixels.get(f"PhysicalSize{axis}")
        if size:
            unit = str(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
            out[axis] = float(size) * _UNIT_UM.get(unit, 1.0)
    if pixels.get("TimeIncrement"):
        out["T"] = float(pixels["TimeIncrement"])
    return out


def _channel_names(tif: Any) -> list[str] | None:
    import tifffile

    if tif.ome_metadata:
        ome = tifffile.xml2dict(tif.ome_metadata).get("OME", {})
        image = ome.get("Image", {})
        image = image[0] if isinstance(image, list) else image
        channels = image.get("Pixels", {}).get("Channel", [])
        channels = channels if isinstance(channels, list) else [channels]
        names = [c.get("Name") for c in channels if isinstance(c, dict)]
        if names and all(names):
            return [str(n) for n in names]
    labels = (tif.imagej_metadata or {}).get("Labels")
    return [str(n) for n in labels] if labels else None


def _resolution_scale(tif: Any) -> dict[str, float]:
    """Pixel size (micrometres) from ImageJ metadata or the X/YResolution tags."""
    page = tif.pages[0]
    tags = page.tags
    ij = tif.imagej_metadata or {}
    out: dict[str, float] = {}
    if "XResolution" not in tags or "YResolution" not in tags:
        return out
    unit_tag = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if ij.get("unit"):
        unit = str(ij["unit"]).replace("\\u00B5", "µ")
        factor = _UNIT_UM.get(unit)
    elif unit_tag == 3:  # centimetre
        factor = 1e4
    else:  # inch (often a meaningless 72 dpi default) or none: no physical scale
        factor = None
    if factor is None:
        return out
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        num, den = tags[tag].value
        if num and den:
            out[axis] = factor * den / num
    if ij.get("spacing"):
        out["Z"] = float(ij["spacing"]) * factor
    if ij.get("finterval"):
        out["T"] = float(ij["finterval"])
    return out


def read_tiff(path: str | list[str]) -> list[LayerData]:
    """Read a TIFF / OME-TIFF into napari layer data.

    Axes come from the file's first series. Y and X (and RGB samples) go last; a channel axis
    becomes ``channel_axis`` (one layer per channel); Z, T and other axes become sliders.
    ``scale`` comes from OME physical sizes, ImageJ metadata or centimetre resolution tags.
    """
    import tifffile

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = str(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes.upper()
        sizes = _ome_scale(tif) if tif.is_ome else {}
        if not sizes:
            sizes = _resolution_scale(tif)
        names = _channel_names(tif)
    if len(axes) != data.ndim:
        from bta_core.imageio import _guess_axes

        axes = _guess_axes(data.shape)
    rgb = "S" in axes and data.shape[axes.index("S")] in (3, 4) and data.dtype == np.uint8
    if "S" in axes and not rgb:
        axes = axes.replace("S", "C" if "C" not in axes else "Q")
    if "Y" not in axes or "X" not in axes:
        axes = axes[:-2] + "YX"
    tail = ["Y", "X"] + (["S"] if rgb else [])
    lead = [a for a in axes if a not in tail]
    order = [axes.index(a) for a in lead + tail]
    data = np.transpose(data, order)
    axes = "".join(lead + tail)
    spatial = [a for a in axes if a != "S"]
    scale = [sizes.get(a, 1.0) for a in spatial]
    stem = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    meta = {"path": path, "axes": axes, "pixel_size_um": sizes.get("X")}
    kwargs: dict[str, Any] = {"metadata": meta, "rgb": rgb}
    if sizes:
        kwargs["units"] = ["s" if a == "T" else "um" if a in "XYZ" else "pixel" for a in spatial]
    if "C" in axes and data.shape[axes.index("C")] > 1:
        c_axis = axes.index("C")
        n = data.shape[c_axis]
        if not names or len(names) != n:
            names = [f"ch{i}" for i in range(n)]
        del scale[spatial.index("C")]
        if "units" in kwargs:
            del kwargs["units"][spatial.index("C")]
        kwargs.update(
            channel_axis=c_axis,
            name=[f"{stem} [{nm}]" for nm in names],
            scale=scale,
            metadata=[{**meta, "channel": i} for i in range(n)],
        )
        kwargs.pop("rgb")
    else:
        if "C" in axes:
            data = np.take(data, 0, axis=axes.index("C"))
            del scale[spatial.index("C")]
            if "units" in kwargs:
                del kwargs["units"][spatial.index("C")]
        kwargs.update(name=stem, scale=scale)
    return [(data, kwargs, "image")]
