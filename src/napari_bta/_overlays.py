"""Overlays of one compared pair: heatmaps, matched regions and B warped onto A.

Each overlay sits on its source layer's plane with that layer's scale, translate and units.
When A and B occupy the same place (two channels of one stack), B's overlays are drawn in
another colour and its heatmap starts hidden, so the two do not stack into one blur.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._layers import (
    HEATMAP_KWARGS,
    META_KEY,
    Planned,
    box_to_rectangle,
    has_layer,
    lift,
    n_leading,
    overlaps,
    placement,
    plan_slots,
)

COLOURS = {"A": "yellow", "B": "cyan"}
EDIT_COLOUR = "#ff2d2d"
"""Red: where the copy differs locally from its source (a pasted or erased patch)."""
OVERLAY_SLOTS = ("heatmap A", "heatmap B", "match A", "match B", "edits", "aligned")
"""The slots of a pair's overlays: the next pair's overlays reuse these layers."""


@dataclass
class Source:
    """The layer (and plane) an image of the pair came from."""

    name: str
    layer: Any
    index: tuple[int, ...]
    shape: tuple[int, int]


def warm_imports() -> None:
    """Import in the worker what making overlays imports lazily (napari's layer features use
    pandas): imported in the UI thread, it froze napari for a second on the first compare."""
    import pandas  # noqa: F401

    import bta_core.match  # noqa: F401


def show_pair(
    viewer: Any,
    tool: str,
    a: Source,
    b: Source,
    match: Any,
    aligned: np.ndarray | None,
    provenance: dict,
) -> tuple[list[Any], list[str]]:
    """Replace ``tool``'s overlays with those of pair (a, b) now; returns (layers, notes)."""
    ops, notes = plan_pair(viewer, tool, a, b, match, aligned, provenance)
    layers = [op() for op in ops]
    return [ly for ly in layers if ly is not None], notes


def plan_pair(
    viewer: Any,
    tool: str,
    a: Source,
    b: Source,
    match: Any,
    aligned: np.ndarray | None,
    provenance: dict,
) -> tuple[list[Callable[[], Any]], list[str]]:
    """The layer updates that show pair (a, b) as callables (``GradualLayers`` spreads them over
    event-loop turns so napari redraws in between), and notes for the user. The last pair's
    overlays are renamed and updated in place, slot by slot (``plan_slots``).

    Overlays of a source layer that was deleted meanwhile are skipped (and noted), never made.
    """
    notes: list[str] = []
    present = {role: has_layer(viewer, s.layer) for role, s in (("A", a), ("B", b))}
    for role, src in (("A", a), ("B", b)):
        if not present[role]:
            notes.append(f"layer {src.name!r} was removed; its overlays are not shown")
    found = match is not None and getattr(match, "transform", None) is not None
    planned: list[Planned] = []
    stacked = present["A"] and present["B"] and overlaps(a.layer, b.layer)
    for role, src in (("A", a), ("B", b)):
        if not present[role] or match is None:
            continue
        lead = n_leading(src.layer)
        meta = {META_KEY: {**provenance, "tool": tool, "overlay": True, "image": src.name}}
        heat = getattr(match, f"heatmap_{role.lower()}", None)
        if heat is not None and getattr(match, "heatmap_source", "alignment") != "none":
            heat = np.asarray(heat, dtype=np.float32)
            kwargs = placement(src.layer, src.index, src.shape, heat.shape[:2])
            kwargs.update(HEATMAP_KWARGS, metadata=meta, visible=not (stacked and role == "B"))
            name = f"BTA heatmap: {src.name}"
            planned.append(Planned(f"heatmap {role}", name, lift(heat, lead), "image", kwargs))
        box = getattr(match, f"box_{role.lower()}", None)
        if found and box is not None:
            score = getattr(match, "confidence", 0.0)
            kwargs = placement(src.layer, src.index, src.shape)
            kwargs.update(
                shape_type="rectangle",
                features={"confidence": [float(score)]},
                edge_color=COLOURS[role],
                face_color="transparent",
                edge_width=max(1.0, 0.006 * max(src.shape)),
                metadata=meta,
            )
            rect = [box_to_rectangle(box, lead)]
            planned.append(
                Planned(f"match {role}", f"BTA match: {src.name}", rect, "shapes", kwargs)
            )
    edits = getattr(match, "local_edits", None) if found else None
    if edits is not None and edits.box_a is not None and present["A"]:  # where B differs locally
        lead = n_leading(a.layer)
        kwargs = placement(a.layer, a.index, a.shape)
        kwargs.update(
            shape_type="rectangle",
            features={"cells": [len(edits.cells)]},
            edge_color=EDIT_COLOUR,
            face_color="transparent",
            edge_width=max(1.0, 0.006 * max(a.shape)),
            metadata={META_KEY: {**provenance, "tool": tool, "overlay": True, "image": a.name}},
        )
        rect = [box_to_rectangle(edits.box_a, lead)]
        planned.append(Planned("edits", f"BTA local edits: {a.name}", rect, "shapes", kwargs))
    if found and aligned is not None and present["A"]:
        lead = n_leading(a.layer)
        arr = np.clip(np.asarray(aligned, dtype=np.float32), 0, 1)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        footprint = getattr(match, "mask_a", None)
        if footprint is not None and footprint.shape == arr.shape[:2]:
            # see-through outside B's footprint: the black there dimmed the rest of A
            arr = np.concatenate([arr[..., :3], footprint[..., None].astype(np.float32)], -1)
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
        kwargs = placement(a.layer, a.index, a.shape)
        meta = {META_KEY: {**provenance, "tool": tool, "overlay": True, "image": a.name}}
        kwargs.update(rgb=rgb, opacity=0.6, contrast_limits=(0.0, 1.0), metadata=meta)
        name = f"BTA aligned: {b.name} -> {a.name}"
        planned.append(Planned("aligned", name, lift(arr, lead), "image", kwargs))
    # the last pair's overlays are renamed and updated in place; the rest go in one batch
    return plan_slots(viewer, tool, planned, slots=OVERLAY_SLOTS), notes


def provenance(names: Sequence[str], decision: Any, checkpoint: str | None) -> dict:
    """What an overlay records about where it came from."""
    from . import __version__

    info: dict = {"pair": list(names), "checkpoint": checkpoint, "version": __version__}
    if decision is not None:
        info.update(verdict=decision.verdict, decided_by=decision.decided_by)
        score = decision.evidence.model_score
        info["model_score"] = None if score is None else float(score)
    return info
