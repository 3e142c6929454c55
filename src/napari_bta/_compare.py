"""Compare panel: similarity matrix across image layers (or the planes of one stack) and overlays.

The plain functions (``layer_items``, ``compare_items``, ``show_pair``) work without a Qt widget,
so tests and scripts can call them; ``ComparePanel`` only wires them to buttons and a worker.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton, Select, Table

from ._compat import prepare_torch_import
from ._layers import (
    HEATMAP_KWARGS,
    box_to_rectangle,
    grid_transform,
    spatial_transform,
    upsert_layer,
)
from ._state import MODEL
from ._workers import Progress, WorkerControls, run_with_progress

MAX_PLANES = 64


@dataclass
class Item:
    """One image to compare: a layer (or one plane/channel of a stack layer) as float RGB."""

    name: str
    rgb: np.ndarray
    layer: Any = None
    index: tuple[int, ...] = ()


@dataclass
class CompareResult:
    """Scores across items and, for one pair, the localisation result and B warped onto A."""

    names: list[str]
    matrix: np.ndarray
    pair: tuple[int, int]
    threshold: float
    checkpoint: str | None
    match: Any = None
    aligned: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        i, j = self.pair
        return float(self.matrix[i, j])

    @property
    def same(self) -> bool:
        return self.score >= self.threshold


def to_rgb(data: Any, rgb: bool = False) -> np.ndarray:
    """A 2-D grey or (H, W, 3/4) RGB array -> float32 (H, W, 3) in [0, 1] (``imageio`` rules)."""
    from bta_core.imageio import scale_intensity

    arr = np.asarray(data)
    if rgb or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        arr = arr[..., :3]
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        if (
            arr.dtype.kind == "f"
            and arr.size
            and float(np.nanmax(arr)) <= 1.0
            and float(np.nanmin(arr)) >= 0
        ):
            return arr.astype(np.float32)
        return np.stack([scale_intensity(arr[..., c], arr.dtype) for c in range(3)], axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    grey = scale_intensity(arr, arr.dtype)
    return np.stack([grey, grey, grey], axis=-1)


def _spatial_ndim(layer: Any) -> int:
    return layer.data[0].ndim if layer.multiscale else layer.data.ndim


def _layer_array(layer: Any) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def n_planes(layer: Any) -> int:
    """How many 2-D planes (over Z/T/channel sliders) an image layer holds."""
    data = _layer_array(layer)
    lead = data.shape[: data.ndim - (3 if layer.rgb else 2)]
    return int(np.prod(lead)) if lead else 1


def layer_items(layers: Sequence[Any], point: Sequence[float] | None = None) -> list[Item]:
    """Items to compare from image layers.

    One layer with several planes: every plane (up to ``MAX_PLANES``) is an item. Several layers:
    each layer's 2-D plane at the viewer's current ``point`` (world coordinates) is an item.
    """
    layers = list(layers)
    if len(layers) == 1 and n_planes(layers[0]) > 1:
        layer = layers[0]
        data = _layer_array(layer)
        lead = data.shape[: data.ndim - (3 if layer.rgb else 2)]
        items = []
        for k, idx in enumerate(np.ndindex(*lead)):
            if k >= MAX_PLANES:
                break
            tag = ",".join(str(i) for i in idx)
            items.append(
                Item(f"{layer.name}[{tag}]", to_rgb(np.asarray(data[idx]), layer.rgb), layer, idx)
            )
        return items
    items = []
    for layer in layers:
        data = _layer_array(layer)
        n_lead = data.ndim - (3 if layer.rgb else 2)
        idx: tuple[int, ...] = ()
        if n_lead > 0:
            if point is not None:
                coords = np.asarray(layer.world_to_data(point))[-_spatial_ndim(layer) :][:n_lead]
            else:
                coords = np.zeros(n_lead)
            idx = tuple(
                int(np.clip(round(c), 0, s - 1))
                for c, s in zip(coords, data.shape[:n_lead], strict=True)
            )
        items.append(
            Item(layer.name, to_rgb(np.asarray(data[idx] if idx else data), layer.rgb), layer, idx)
        )
    return items


def best_pair(matrix: np.ndarray) -> tuple[int, int]:
    """The most similar pair of different items (upper triangle)."""
    n = matrix.shape[0]
    if n < 2:
        raise ValueError("need at least two images to compare")
    masked = np.where(np.triu(np.ones((n, n), bool), k=1), matrix, -np.inf)
    i, j = np.unravel_index(int(np.argmax(masked)), masked.shape)
    return int(i), int(j)


def localise(
    model: Any, image_a: np.ndarray, image_b: np.ndarray, stop: threading.Event | None = None
) -> Generator[Progress, None, tuple[Any, np.ndarray | None, str | None]]:
    """Generator: ``bta_core.match`` result for A and B, B warped into A's frame, and a note.

    Without the localisation module (or without a verified match) the note says so and the
    result or the aligned image is None.
    """
    try:
        from bta_core.match import match_images, warp_b_to_a
    except ImportError:
        return None, None, "localisation (bta_core.match) is not available: scores only"
    result = yield from run_with_progress(match_images, image_a, image_b, model=model, stop=stop)
    if getattr(result, "transform", None) is None:
        return result, None, "no matching region was verified for this pair"
    return result, np.asarray(warp_b_to_a(image_b, result, image_a.shape[:2])), None


def compare_job(
    model: Any,
    items: Sequence[Item],
    pair: tuple[int, int] | None = None,
    matrix: np.ndarray | None = None,
    stop: threading.Event | None = None,
) -> Generator[Progress, None, CompareResult]:
    """Generator worker: embed the items, score every pair, localise one pair (yields progress)."""
    prepare_torch_import()
    import torch

    from bta_core.model import embed_images

    stop = stop or threading.Event()
    if len(items) < 2:
        raise ValueError("choose two or more image layers, or one layer with several planes")
    if matrix is None:
        z = yield from run_with_progress(
            embed_images, model, [it.rgb for it in items], 8, stop=stop
        )
        with torch.no_grad():
            z = z.to(model.device)
            matrix = model.score_matrix(z, z).float().cpu().numpy()
    pair = pair if pair is not None else best_pair(matrix)
    yield Progress(len(items), len(items), {"stage": "localising"})
    match, aligned, note = yield from localise(
        model, items[pair[0]].rgb, items[pair[1]].rgb, stop=stop
    )
    return CompareResult(
        names=[it.name for it in items],
        matrix=np.asarray(matrix, dtype=np.float32),
        pair=pair,
        threshold=float(model.config.threshold),
        checkpoint=MODEL.source
        if MODEL.model is model
        else getattr(model, "checkpoint_path", None),
        match=match,
        aligned=aligned,
        notes=[note] if note else [],
    )


def compare_items(
    model: Any, items: Sequence[Item], pair: tuple[int, int] | None = None
) -> CompareResult:
    """Run ``compare_job`` to the end in the calling thread."""
    gen = compare_job(model, items, pair)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def verdict_text(result: CompareResult) -> str:
    """'A vs B: 0.93, SAME source (threshold 0.50)'."""
    i, j = result.pair
    verdict = "SAME source (reuse suspected)" if result.same else "different sources"
    text = f"{result.names[i]} vs {result.names[j]}: {result.score:.3f}, {verdict} (threshold {result.threshold:.2f})"
    m = result.match
    if m is not None and getattr(m, "transform", None) is not None:
        try:
            from bta_core.match import summary

            text += f"\nLocalised: {summary(m)}"
        except Exception:  # summary is cosmetic
            text += f"\nLocalised (confidence {float(getattr(m, 'confidence', 0)):.2f})"
    elif m is not None:
        text += "\nNo shared region was verified"
    return text


def _provenance(result: CompareResult, role: str, image: str) -> dict:
    from . import __version__

    i, j = result.pair
    return {
        "napari_bta": {
            "tool": "compare",
            "role": role,
            "image": image,
            "pair_key": sorted({result.names[i], result.names[j]}),
            "pair": [result.names[i], result.names[j]],
            "score": result.score,
            "threshold": result.threshold,
            "same": result.same,
            "checkpoint": result.checkpoint,
            "version": __version__,
        }
    }


def _remove_stale_overlays(viewer: Any, keep: set[str]) -> None:
    """Remove compare overlays of images that are not in the pair shown now."""
    for layer in list(viewer.layers):
        info = layer.metadata.get("napari_bta", {}) if isinstance(layer.metadata, dict) else {}
        if info.get("tool") != "compare":
            continue
        if info.get("image") not in keep or info.get("pair_key") != sorted(keep):
            viewer.layers.remove(layer)


def show_pair(viewer: Any, result: CompareResult, items: Sequence[Item]) -> list[Any]:
    """Add or update the overlays of ``result.pair``: heatmaps, matched regions, aligned B.

    Returns the layers touched. Layer names depend on the images' names, so a second run on the
    same pair updates the same layers.
    """
    i, j = result.pair
    a, b = items[i], items[j]
    m = result.match
    touched: list[Any] = []
    _remove_stale_overlays(viewer, keep={a.name, b.name} if m is not None else set())
    if m is None:
        return touched
    score = getattr(m, "score", None)
    score = float(result.score if score is None else score)
    for item, role in ((a, "A"), (b, "B")):
        heat = getattr(m, f"heatmap_{role.lower()}", None)
        if heat is not None:
            heat = np.asarray(heat, dtype=np.float32)
            scale, translate = grid_transform(item.layer, heat.shape[:2], item.rgb.shape[:2])
            touched.append(
                upsert_layer(
                    viewer,
                    f"BTA heatmap: {item.name}",
                    heat,
                    "image",
                    scale=scale,
                    translate=translate,
                    metadata=_provenance(result, f"heatmap {role}", item.name),
                    **HEATMAP_KWARGS,
                )
            )
        box = getattr(m, f"box_{role.lower()}", None)
        if box is not None:
            scale, translate = spatial_transform(item.layer)
            touched.append(
                upsert_layer(
                    viewer,
                    f"BTA match: {item.name}",
                    [box_to_rectangle(box)],
                    "shapes",
                    shape_type="rectangle",
                    features={"score": [score]},
                    text={
                        "string": "{score:.2f}",
                        "color": "yellow",
                        "size": 12,
                        "anchor": "upper_left",
                    },
                    edge_color="yellow",
                    face_color="transparent",
                    edge_width=max(1.0, 0.006 * max(item.rgb.shape[:2])),
                    scale=scale,
                    translate=translate,
                    metadata=_provenance(result, f"region {role}", item.name),
                )
            )
    if result.aligned is not None:
        scale, translate = spatial_transform(a.layer)
        aligned = np.clip(np.asarray(result.aligned, dtype=np.float32), 0, 1)
        is_rgb = aligned.ndim == 3 and aligned.shape[-1] in (3, 4)
        touched.append(
            upsert_layer(
                viewer,
                f"BTA aligned: {b.name} -> {a.name}",
                aligned,
                "image",
                rgb=is_rgb,
                scale=scale,
                translate=translate,
                opacity=0.6,
                contrast_limits=(0.0, 1.0),
                metadata=_provenance(result, "B warped into A", a.name),
            )
        )
    return touched


def _inferno_hex(values: np.ndarray) -> list[str]:
    from napari.utils.colormaps import ensure_colormap

    rgba = ensure_colormap("inferno").map(np.clip(values.ravel(), 0, 1))
    return ["#{:02x}{:02x}{:02x}".format(*(int(255 * c) for c in px[:3])) for px in rgba]


class ComparePanel(Container):
    """Pick image layers (or one stack), score every pair, overlay where the chosen pair matches."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = viewer
        self._layers = Select(label="Images", choices=self._image_layer_names, allow_multiple=True)
        self._run = PushButton(text="Compare")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="Select 2+ image layers, or one stack to compare its planes")
        self._verdict = Label(value="")
        self._table = Table(value={"data": [], "index": [], "columns": []})
        self._table.read_only = True
        super().__init__(
            widgets=[
                self._layers,
                self._run,
                self._cancel,
                self._status,
                self._verdict,
                self._table,
            ],
            labels=False,
        )
        self._layers.native.setMaximumHeight(140)
        self._verdict.native.setWordWrap(True)
        self.controls = WorkerControls(self._run, self._cancel, self._status, "Comparing")
        self.items: list[Item] = []
        self.result: CompareResult | None = None
        self._run.changed.connect(self.run)
        self._table.native.cellClicked.connect(self._cell_clicked)
        for event in ("inserted", "removed", "moved"):
            getattr(viewer.layers.events, event).connect(self._refresh)
        self.native.destroyed.connect(lambda *_: self.controls.close())

    def _image_layer_names(self, *_: Any) -> list[str]:
        from napari.layers import Image

        return [
            ly.name
            for ly in self._viewer.layers
            if isinstance(ly, Image) and not ly.name.startswith(("BTA heatmap", "BTA aligned"))
        ]

    def _refresh(self, *_: Any) -> None:
        self._layers.reset_choices()

    def run(self, *_: Any, pair: tuple[int, int] | None = None) -> Any:
        """Score the selected layers and localise the best pair (or ``pair``).

        With ``pair`` after an earlier run, the matrix is kept and only that pair is localised.
        """
        from napari.utils.notifications import show_error

        try:
            model = MODEL.get_or_load_default()
        except Exception as exc:
            show_error(f"No model: load one in the BTA Model panel ({exc})")
            return None
        matrix = None
        if pair is None or self.result is None:
            names = list(self._layers.value)
            try:
                self.items = layer_items(
                    [self._viewer.layers[n] for n in names], self._viewer.dims.point
                )
            except Exception as exc:
                show_error(f"Cannot compare these layers: {exc}")
                return None
            if len(self.items) < 2:
                show_error("Choose two or more image layers, or one layer with several planes")
                return None
        elif self.result is not None:
            matrix = self.result.matrix
        return self.controls.start(
            compare_job, model, self.items, pair, matrix, on_return=self._show
        )

    def _cell_clicked(self, row: int, col: int) -> None:
        if self.result is not None and row != col and not self.controls.busy:
            self.run(pair=(row, col))

    def _show(self, result: CompareResult) -> None:
        from napari.utils.notifications import show_info

        self.result = result
        self._table.value = {
            "data": np.round(result.matrix, 3).tolist(),
            "index": result.names,
            "columns": result.names,
        }
        self._colour_table(result.matrix)
        self._verdict.value = verdict_text(result)
        show_pair(self._viewer, result, self.items)
        for note in result.notes:
            show_info(note)

    def _colour_table(self, matrix: np.ndarray) -> None:
        from qtpy.QtGui import QColor

        table = self._table.native
        colours = _inferno_hex(matrix)
        n = matrix.shape[1]
        for k, hexcol in enumerate(colours):
            cell = table.item(k // n, k % n)
            if cell is not None:
                cell.setBackground(QColor(hexcol))
                cell.setForeground(QColor("black" if matrix.flat[k] > 0.6 else "white"))
