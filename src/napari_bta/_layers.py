"""Turn results into napari layers placed exactly over their source plane.

Overlays copy ``scale``, ``translate``, ``units`` and ``axis_labels`` of the layer they describe
and keep its leading (Z/T/channel) axes as length-1 axes positioned at the compared plane, so a
2-D overlay shows on that plane only. Same-named layers are updated, not stacked; every overlay
carries ``metadata["napari_bta"]`` with its tool, so one tool's group can be replaced as a whole.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

HEATMAP_KWARGS = {
    "colormap": "inferno",
    "blending": "translucent",  # additive washed a bright-field image out to white
    "opacity": 0.45,
    "contrast_limits": (0.0, 1.0),
}
META_KEY = "napari_bta"


def bta_info(layer: Any) -> dict:
    """The plugin's metadata of ``layer`` ({} for layers it did not make)."""
    meta = getattr(layer, "metadata", None)
    info = meta.get(META_KEY) if isinstance(meta, dict) else None
    return info if isinstance(info, dict) else {}


def is_overlay(layer: Any) -> bool:
    """True for result layers the plugin made (heatmaps, regions, aligned copies)."""
    return bool(bta_info(layer).get("overlay")) or str(layer.name).startswith("BTA ")


def has_layer(viewer: Any, layer: Any) -> bool:
    """Whether ``layer`` (this very object, not one of the same name) is still in the viewer."""
    target = unwrap(layer)
    return any(unwrap(ly) is target for ly in viewer.layers)


def unwrap(obj: Any) -> Any:
    """The object behind napari's public-only proxy (plugins get the viewer through one)."""
    return getattr(obj, "__wrapped__", obj)


def remove_group(viewer: Any, tool: str, keep: Sequence[str] = ()) -> None:
    """Remove every layer the plugin added for ``tool`` except those named in ``keep``.

    In one batch: napari's canvas collects garbage after each removal outside a batch (about
    0.35 s with torch loaded), which froze the viewer for seconds when a pair of 7 layers was
    replaced by the next."""
    gone = [ly for ly in viewer.layers if bta_info(ly).get("tool") == tool and ly.name not in keep]
    if not gone:
        return
    with batched(viewer):
        for layer in gone:
            viewer.layers.remove(layer)


@contextlib.contextmanager
def batched(viewer: Any) -> Iterator[None]:
    """``viewer.layers.batched_update()`` where napari has it (one scene-graph update)."""
    batch = getattr(unwrap(viewer.layers), "batched_update", None)
    with batch() if callable(batch) else contextlib.nullcontext():
        yield


def upsert_layer(viewer: Any, name: str, data: Any, layer_type: str, **kwargs: Any) -> Any:
    """Update the layer called ``name`` with new data and properties, or add it if missing.

    A layer that ``updatable`` rejects is replaced, so repeated runs never pile up duplicates
    (``plan_pair`` removes those first, in its one batch).
    """
    if name in viewer.layers:
        layer = viewer.layers[name]
        if updatable(layer, data, layer_type, kwargs):
            kwargs.pop("rgb", None)
            layer.data = data
            for key, value in kwargs.items():
                setattr(layer, key, value)
            return layer
        viewer.layers.remove(name)
    add = getattr(viewer, f"add_{layer_type}")
    return add(data, name=name, **kwargs)


def updatable(layer: Any, data: Any, layer_type: str, kwargs: dict) -> bool:
    """Whether ``upsert_layer`` can give ``layer`` new ``data`` and ``kwargs`` in place: an
    image or shapes layer of the same dimensionality (and, for images, RGB or not).

    Replacing a layer costs napari a garbage collection (0.3-0.9 s with torch loaded), and the
    type is read behind napari's proxy (it named every layer "PublicOnlyProxy", so a re-run
    replaced each overlay one by one)."""
    layer = unwrap(layer)
    kind = type(layer).__name__.lower()
    if kind != layer_type or kind not in ("image", "shapes"):
        return False
    if layer.ndim != _ndim(data, layer_type, kwargs):
        return False
    return kind != "image" or layer.rgb == bool(kwargs.get("rgb", False))


def _ndim(data: Any, layer_type: str, kwargs: dict) -> int:
    if layer_type == "image":
        return np.ndim(data) - (1 if kwargs.get("rgb") else 0)
    return int(np.asarray(data[0]).shape[-1]) if len(data) else 2


def n_leading(layer: Any) -> int:
    """Number of non-spatial (Z/T/channel) axes before the last two (Y, X) of ``layer``."""
    return max(0, int(layer.ndim) - 2)


def placement(
    layer: Any,
    index: Sequence[int],
    plane_shape: tuple[int, int],
    grid_shape: tuple[int, int] | None = None,
) -> dict:
    """Layer kwargs that put a 2-D map (``grid_shape`` cells, default pixels) over one plane.

    The map covers plane ``index`` (along the leading axes) of ``layer``; the returned ``scale``
    and ``translate`` have ``layer.ndim`` entries, and ``units``/``axis_labels`` are the layer's.
    A tile grid of ``n`` cells over ``N`` pixels is stretched so its outer edges meet the image's.
    """
    lead = n_leading(layer)
    scale = np.asarray(layer.scale, float)
    translate = np.asarray(layer.translate, float)
    idx = np.zeros(lead) if len(index) != lead else np.asarray(index, float)
    yx_scale, yx_translate = scale[-2:].copy(), translate[-2:].copy()
    if grid_shape is not None:
        factor = np.asarray(plane_shape, float) / np.asarray(grid_shape, float)
        yx_translate = yx_translate + (factor / 2 - 0.5) * yx_scale
        yx_scale = yx_scale * factor
    kwargs = {
        "scale": np.concatenate([scale[:lead], yx_scale]),
        "translate": np.concatenate([translate[:lead] + idx * scale[:lead], yx_translate]),
    }
    for key in ("units", "axis_labels"):
        value = getattr(layer, key, None)
        if value is not None:
            kwargs[key] = tuple(value)
    return kwargs


def lift(data: np.ndarray, lead: int) -> np.ndarray:
    """A 2-D map (or ``(H, W, 3)`` with ``rgb``) with ``lead`` length-1 axes in front."""
    arr = np.asarray(data)
    return arr.reshape((1,) * lead + arr.shape)


def box_to_rectangle(box: tuple[float, float, float, float], lead: int = 0) -> np.ndarray:
    """``(x0, y0, x1, y1)`` in pixels -> napari rectangle corners, with ``lead`` zero axes first."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) - 0.5
    return np.concatenate([np.zeros((4, lead)), corners], axis=1)


def world_box(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest world (Y, X) corners of ``layer``'s last two axes."""
    extent = np.asarray(layer.extent.world, float)
    return extent[0, -2:], extent[1, -2:]


def overlaps(layer_a: Any, layer_b: Any) -> bool:
    """True when the two layers cover a common (Y, X) region in world space."""
    lo_a, hi_a = world_box(layer_a)
    lo_b, hi_b = world_box(layer_b)
    return bool(np.all(np.minimum(hi_a, hi_b) > np.maximum(lo_a, lo_b)))


class GradualLayers:
    """Apply layer updates one per event-loop turn, so napari redraws between them.

    Adding several layers at once makes napari build and draw them all in one go (seconds with
    software OpenGL); one at a time, each step is short. A new ``run`` drops the old queue.
    """

    def __init__(self, delay_ms: int = 100) -> None:
        self.delay_ms = delay_ms
        self._ops: list[Callable[[], Any]] = []
        self._generation = 0

    @property
    def pending(self) -> bool:
        return bool(self._ops)

    def run(self, ops: Sequence[Callable[[], Any]]) -> None:
        self._generation += 1
        self._ops = list(ops)
        self._step(self._generation)

    def clear(self) -> None:
        self._generation += 1
        self._ops = []

    def _step(self, generation: int) -> None:
        from qtpy.QtCore import QTimer

        if generation != self._generation or not self._ops:
            return
        op = self._ops.pop(0)
        try:
            op()
        except Exception:  # a layer removed meanwhile: skip this overlay, keep the rest
            logging.getLogger("napari_bta").warning("overlay update failed", exc_info=True)
        if self._ops:
            QTimer.singleShot(self.delay_ms, lambda: self._step(generation))
