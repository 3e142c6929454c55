"""Turn results into napari layers: same-named layers are updated, not stacked."""

from __future__ import annotations

from typing import Any

import numpy as np

HEATMAP_KWARGS = {
    "colormap": "inferno",
    "blending": "additive",
    "opacity": 0.5,
    "contrast_limits": (0.0, 1.0),
}


def upsert_layer(viewer: Any, name: str, data: Any, layer_type: str, **kwargs: Any) -> Any:
    """Update the layer called ``name`` with new data and properties, or add it if missing.

    When the existing layer has another type (or its data cannot be replaced) it is removed and
    added again, so repeated runs never pile up duplicates.
    """
    if name in viewer.layers:
        layer = viewer.layers[name]
        if type(layer).__name__.lower() == layer_type:
            try:
                if layer_type == "shapes":
                    layer.data = []
                    layer.add(data, shape_type=kwargs.pop("shape_type", "rectangle"))
                    for key in ("features", "text"):
                        if key in kwargs:
                            setattr(layer, key, kwargs.pop(key))
                else:
                    if layer_type == "image" and layer.rgb != kwargs.get("rgb", layer.rgb):
                        raise ValueError("rgb changed")
                    layer.data = data
                kwargs.pop("rgb", None)
                for key, value in kwargs.items():
                    setattr(layer, key, value)
                return layer
            except (ValueError, TypeError, AttributeError):
                pass
        viewer.layers.remove(name)
    add = getattr(viewer, f"add_{layer_type}")
    return add(data, name=name, **kwargs)


def spatial_transform(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translate of the last two (Y, X) axes of ``layer``."""
    return np.asarray(layer.scale[-2:], float), np.asarray(layer.translate[-2:], float)


def grid_transform(layer: Any, grid_shape: tuple[int, int], image_shape: tuple[int, int]):
    """Scale/translate that lay a coarse ``grid_shape`` map (e.g. per tile) over ``layer``'s pixels.

    Tile ``t`` of a map with ``n`` tiles over ``N`` pixels covers pixels ``t*N/n .. (t+1)*N/n``.
    """
    scale, translate = spatial_transform(layer)
    factor = np.asarray(image_shape, float) / np.asarray(grid_shape, float)
    return scale * factor, translate + (factor / 2 - 0.5) * scale


def box_to_rectangle(box: tuple[float, float, float, float]) -> np.ndarray:
    """``(x0, y0, x1, y1)`` in pixels -> napari rectangle corners in (row, col) order."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) - 0.5
