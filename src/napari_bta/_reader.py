"""Reader for TIFF / OME-TIFF stacks: channels as separate layers, Z/T as sliders, physical scale.

``napari_get_reader`` answers ``None`` for anything it cannot read and never raises, so napari can
fall back to other readers; for a TIFF it declines it also shows why, in one notification.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".tif", ".tiff")
LayerData = tuple[Any, dict, str]
RGB_COLOURS = ("red", "green", "blue", "gray")
"""Colours of the channels of an RGB(A) image that napari cannot show as RGB (not 8-bit)."""

# ResolutionUnit tag values -> micrometres per unit (TIFF 6.0: 2 = inch, 3 = centimetre).
_UNIT_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


def napari_get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Return a reader when ``path`` is a TIFF this plugin can really read, else ``None``.

    The file is read here, completely, so a truncated, oversized (see ``bta_core.imageio``'s
    pixel budget), complex-valued or otherwise unreadable file is declined instead of claimed
    and failing later; the returned function hands over the layers already read.
    """
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        path = str(path)
        if not path.lower().endswith(SUFFIXES) or not os.path.isfile(path):
            return None
        layers = read_tiff(path)
    except Exception as exc:  # corrupt, truncated, too large, not a TIFF: let other readers try
        _say_why(path, exc)
        return None

    def reader(_path: str | list[str]) -> list[LayerData]:
        return layers

    return reader


def _say_why(path: Any, exc: Exception) -> None:
    """One sentence for the user when a TIFF is declined: without it napari only says the
    plugin "refused the file". Another reader may still open it; then this is just a note."""
    if not isinstance(path, str):
        return
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        reason = "the file is empty (0 bytes)"
    if path not in reason:
        reason = f"{path}: {reason}"
    try:
        from napari.utils.notifications import show_warning

        show_warning(f"napari-bta cannot read this TIFF: {reason}")
    except Exception:  # no napari (a plain Python caller): the None answer is enough
        pass


def _positive(values: dict[str, float]) -> dict[str, float]:
    """Only the finite, positive sizes (metadata such as ImageJ spacing can be 0, NaN or junk)."""
    return {k: v for k, v in values.items() if math.isfinite(v) and v > 0}


def _metadata(tif: Any) -> tuple[dict[str, float], list[str] | None]:
    """Physical sizes and channel names; damaged metadata gives none instead of an error."""
    sizes: dict[str, float] = {}
    try:
        sizes = _positive(_ome_scale(tif)) if tif.is_ome else {}
    except Exception:
        sizes = {}
    if not sizes:
        try:
            sizes = _positive(_resolution_scale(tif))
        except Exception:
            sizes = {}
    try:
        names = _channel_names(tif)
    except Exception:
        names = None
    return sizes, names


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
            out[axis] = _float(size) * _UNIT_UM.get(unit, 1.0)
    if pixels.get("TimeIncrement"):
        out["T"] = _float(pixels["TimeIncrement"])
    return out


def _float(value: Any) -> float:
    """A metadata number, NaN when it is not one (dropped later by ``_positive``)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


def _per_channel(names: list[str] | None, n: int) -> list[str] | None:
    """``n`` channel names from the file's names: as given, or the first ``n`` when ImageJ
    labels every plane (``['DAPI', 'GFP', 'DAPI', 'GFP', ...]`` for Z x C planes)."""
    if not names or len(names) % n:
        return None
    first = names[:n]
    return first if names == first * (len(names) // n) else None


def _is_photometric_rgb(tif: Any) -> bool:
    """Whether the first page stores its samples as RGB (not separate grey channels)."""
    try:
        return int(tif.pages[0].photometric) == 2  # TIFF 6.0: PhotometricInterpretation RGB
    except Exception:
        return False


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
        value = tags[tag].value
        num, den = value if isinstance(value, tuple) and len(value) == 2 else (0, 0)
        if num and den:
            out[axis] = factor * den / num
    if ij.get("spacing"):
        out["Z"] = _float(ij["spacing"]) * factor
    if ij.get("finterval"):
        out["T"] = _float(ij["finterval"])
    return out


def read_tiff(path: str | list[str]) -> list[LayerData]:
    """Read a TIFF / OME-TIFF into napari layer data.

    Axes come from the file's first series. Y and X (and RGB samples) go last; a channel axis
    becomes ``channel_axis`` (one layer per channel); Z, T and other axes become sliders.
    ``scale`` comes from OME physical sizes, ImageJ metadata or centimetre resolution tags.
    """
    import tifffile

    from bta_core.imageio import quiet_tifffile, read_first_stack, resolve_axes

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = str(path)
    with quiet_tifffile(path), tifffile.TiffFile(path) as tif:
        data, raw_axes = read_first_stack(path, tif)
        axes = resolve_axes(raw_axes, data.shape)
        sizes, names = _metadata(tif)
        photometric_rgb = _is_photometric_rgb(tif)
    if data.ndim < 2 or data.size == 0:
        raise ValueError(f"{path}: no 2-D image in the file (shape {data.shape})")
    rgb = "S" in axes and data.shape[axes.index("S")] in (3, 4) and data.dtype == np.uint8
    samples_rgb = "S" in axes and not rgb and "C" not in axes and photometric_rgb
    if "S" in axes and not rgb:  # samples that are not RGB: channels (or one more slider)
        spare = "C" if "C" not in axes else next(a for a in "QRUVW" if a not in axes)
        axes = axes.replace("S", spare)
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
    kwargs: dict[str, Any] = {"metadata": meta, "rgb": rgb, "axis_labels": list(spatial)}
    if sizes:
        kwargs["units"] = ["s" if a == "T" else "um" if a in "XYZ" else "pixel" for a in spatial]
    if "C" in axes and data.shape[axes.index("C")] > 1:
        c_axis = axes.index("C")
        n = data.shape[c_axis]
        names = _per_channel(names, n) or [f"ch{i}" for i in range(n)]
        del scale[spatial.index("C")]
        del kwargs["axis_labels"][spatial.index("C")]
        if "units" in kwargs:
            del kwargs["units"][spatial.index("C")]
        kwargs.update(
            channel_axis=c_axis,
            name=[f"{stem} [{nm}]" for nm in names],
            scale=scale,
            metadata=[{**meta, "channel": i} for i in range(n)],
        )
        kwargs.pop("rgb")
        if samples_rgb and n in (3, 4):  # a 16-bit or float RGB image: its channels in colour
            kwargs["colormap"] = list(RGB_COLOURS[:n])
    else:
        if "C" in axes:
            data = np.take(data, 0, axis=axes.index("C"))
            del scale[spatial.index("C")]
            del kwargs["axis_labels"][spatial.index("C")]
            if "units" in kwargs:
                del kwargs["units"][spatial.index("C")]
        kwargs.update(name=stem, scale=scale)
    return [(data, kwargs, "image")]
