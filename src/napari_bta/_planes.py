"""Image layers as the planes the plugin works on: a layer's plane at the sliders, or every
plane of one stack, with their names (``stack[z=3]``, as the CLI names planes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._overlays import Source

MAX_PLANES = 64


@dataclass
class Item:
    """One image to compare: a layer's plane (raw ``data``; ``rgb`` is made in the worker)."""

    name: str
    data: Any
    layer: Any = None
    index: tuple[int, ...] = ()
    is_rgb: bool = False
    rgb: np.ndarray | None = None

    def source(self) -> Source:
        shape = tuple(np.shape(self.data)[:2])
        return Source(self.name, self.layer, self.index, shape)  # type: ignore[arg-type]


def to_rgb(data: Any, rgb: bool = False) -> np.ndarray:
    """A 2-D grey or (H, W, 3/4) RGB array -> float32 (H, W, 3) in [0, 1] (``imageio`` rules)."""
    from bta_core.imageio import to_float_rgb

    arr = np.asarray(data)
    if not (arr.ndim == 2 or (arr.ndim == 3 and (rgb or arr.shape[-1] in (3, 4)))):
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    return to_float_rgb(arr, "layer")


def _array(layer: Any) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def n_planes(layer: Any) -> int:
    """How many 2-D planes (over Z/T/channel axes) an image layer holds."""
    data = _array(layer)
    lead = data.shape[: data.ndim - (3 if layer.rgb else 2)]
    return int(np.prod(lead)) if lead else 1


def plane_tag(layer: Any, idx: tuple[int, ...]) -> str:
    """``z=3`` (or ``t=1,z=3``) for a plane of a stack layer, as the CLI names planes
    (``file.tif[z=3]``); ``plane=3`` where the layer's axes have no names."""
    labels = [str(x) for x in (getattr(layer, "axis_labels", None) or ())][: len(idx)]
    named = [lab.lower() if lab.isalpha() and len(lab) <= 8 else "" for lab in labels]
    if len(named) != len(idx) or not all(named):
        named = ["plane"] if len(idx) == 1 else [f"axis{k}" for k in range(len(idx))]
    return ",".join(f"{n}={i}" for n, i in zip(named, idx, strict=True))


def plane_item(layer: Any, point: Sequence[float] | None = None) -> Item:
    """The plane of an image layer at the viewer's ``point`` (world coordinates; None: the
    first plane), as an item; a 2-D or RGB layer is its own plane."""
    data = _array(layer)
    n_lead = data.ndim - (3 if layer.rgb else 2)
    idx: tuple[int, ...] = ()
    if n_lead > 0:
        coords = (
            np.asarray(layer.world_to_data(point))[-layer.ndim :][:n_lead]
            if point is not None
            else np.zeros(n_lead)
        )
        idx = tuple(
            int(np.clip(round(c), 0, s - 1))
            for c, s in zip(coords, data.shape[:n_lead], strict=True)
        )
    plane = np.asarray(data[idx] if idx else data)
    return Item(layer.name, plane, layer, idx, layer.rgb)


def layer_items(
    layers: Sequence[Any],
    point: Sequence[float] | None = None,
    convert: bool = False,
    max_planes: int | None = MAX_PLANES,
) -> list[Item]:
    """Items to compare from image layers (``convert``: also make their float RGB now).

    One layer with several planes: every plane (up to ``max_planes``) is an item. Several
    layers: each layer's plane at the viewer's current ``point`` (world coordinates) is an item.
    """
    layers = list(layers)
    items: list[Item] = []
    if len(layers) == 1 and n_planes(layers[0]) > 1:
        layer = layers[0]
        data = _array(layer)
        lead = data.shape[: data.ndim - (3 if layer.rgb else 2)]
        for k, idx in enumerate(np.ndindex(*lead)):
            if max_planes is not None and k >= max_planes:
                break
            tag = plane_tag(layer, idx)
            items.append(Item(f"{layer.name}[{tag}]", np.asarray(data[idx]), layer, idx, layer.rgb))
    else:
        items = [plane_item(layer, point) for layer in layers]
    if convert:
        for item in items:
            item.rgb = to_rgb(item.data, item.is_rgb)
    return items
