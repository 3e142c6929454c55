"""Turn results into napari layers placed exactly over their source plane.

Overlays copy ``scale``, ``translate``, ``units`` and ``axis_labels`` of the layer they describe
and keep its leading (Z/T/channel) axes as length-1 axes positioned at the compared plane, so a
2-D overlay shows on that plane only. Every layer the plugin adds carries ``metadata["napari_bta"]``
with its tool and slot ("image A", "heatmap B"...): the next result of a tool renames and updates
the last one's layers in place (``plan_slots``), removing only what it cannot reuse, in one batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

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


class Planned(NamedTuple):
    """One layer to show: its slot (``"heatmap A"``...), name, data, type and add kwargs."""

    slot: str
    name: str
    data: Any
    layer_type: str
    kwargs: dict


def tool_layers(viewer: Any, tool: str, slots: Collection[str] | None = None) -> list[Any]:
    """The layers the plugin added for ``tool`` (only those in ``slots``, when given)."""
    return [
        ly
        for ly in viewer.layers
        if bta_info(ly).get("tool") == tool and (slots is None or bta_info(ly).get("slot") in slots)
    ]


def remove_layers(viewer: Any, layers: Sequence[Any]) -> None:
    """Remove ``layers`` (those still in the viewer) in one batch: napari's canvas collects
    garbage after each removal outside a batch (about 0.35-0.6 s with torch loaded)."""
    gone = [ly for ly in layers if has_layer(viewer, ly)]
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


def plan_slots(
    viewer: Any, tool: str, items: Sequence[Planned], slots: Collection[str] | None = None
) -> list[Callable[[], Any]]:
    """The ops that show ``items`` for ``tool`` in the layers it already has: first one batched
    removal of its layers (in ``slots``, default all) that no item reuses, then one
    ``upsert_layer`` per item, which renames and updates its layer in place or adds one.

    An item reuses the tool's layer of its name, else one of its slot, else any other that
    ``updatable`` accepts. So the next pair (other files, other names) reuses the last pair's
    layers: removing them cost napari a garbage collection (0.5-1.4 s frozen per row click).
    A layer of an item's name that cannot take its data is removed first, so a rename never
    collides with one of the tool's own layers (napari would suffix it: "name [1]").
    """
    own = tool_layers(viewer, tool, slots)
    free = list(range(len(own)))
    reuse: list[Any] = [None] * len(items)
    for k, item in enumerate(items):  # by name; a misfit of that name goes, freeing the name
        j = next((j for j in free if own[j].name == item.name), None)
        if j is not None:
            free.remove(j)
            reuse[k] = own[j] if _fits(own[j], item) else None
    for by_slot in (True, False):  # then one of its slot, then any that fits
        for k, item in enumerate(items):
            slot = item.slot if by_slot else None
            j = (
                None
                if reuse[k] is not None
                else next((j for j in free if _fits(own[j], item, slot)), None)
            )
            if j is not None:
                free.remove(j)
                reuse[k] = own[j]
    kept = {id(unwrap(ly)) for ly in reuse if ly is not None}
    ops: list[Callable[[], Any]] = [
        partial(remove_layers, viewer, [ly for ly in own if id(unwrap(ly)) not in kept])
    ]
    for item, layer in zip(items, reuse, strict=True):
        meta = dict(item.kwargs.get("metadata") or {})
        meta[META_KEY] = {**meta.get(META_KEY, {}), "tool": tool, "slot": item.slot}
        kwargs = {"visible": True, **item.kwargs, "metadata": meta}
        ops.append(
            partial(upsert_layer, viewer, item.name, item.data, item.layer_type, layer, **kwargs)
        )
    return ops


def _fits(layer: Any, item: Planned, slot: str | None = None) -> bool:
    """Whether ``item`` can reuse ``layer`` (in ``slot``, when given)."""
    ok_slot = slot is None or bta_info(layer).get("slot") == slot
    return ok_slot and updatable(layer, item.data, item.layer_type, item.kwargs)


def upsert_layer(
    viewer: Any, name: str, data: Any, layer_type: str, layer: Any = None, **kwargs: Any
) -> Any:
    """Give ``layer`` (one the plugin made) ``name``, ``data`` and the add kwargs in place, or
    add a new layer when there is none (or it was deleted, or ``updatable`` rejects it).

    An image gets the contrast limits a new layer of that data would get, unless given.
    """
    if (
        layer is not None
        and has_layer(viewer, layer)
        and updatable(layer, data, layer_type, kwargs)
    ):
        kwargs.pop("rgb", None)
        layer.data = data
        if layer.name != name:
            layer.name = name
        if layer_type == "image" and "contrast_limits" not in kwargs:
            layer.reset_contrast_limits_range()
            layer.reset_contrast_limits()
        for key, value in kwargs.items():
            setattr(layer, key, value)
        return layer
    add = getattr(viewer, f"add_{layer_type}")
    return add(data, name=name, **kwargs)


def updatable(layer: Any, data: Any, layer_type: str, kwargs: dict) -> bool:
    """Whether ``upsert_layer`` can give ``layer`` new ``data`` and ``kwargs`` in place: an
    image or shapes layer of the same dimensionality (and, for images, RGB or not).

    The type is read behind napari's proxy (it named every layer "PublicOnlyProxy", so a re-run
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
