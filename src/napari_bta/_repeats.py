"""Compare panel, "Find repeated panels": panels repeated inside one image layer.

The search is ``bta_core.match.within.find_repeated_panels`` (the code behind
``bta-core match FIG``): the figure is cut into panels and every pair of panels gets the
evidence and the verdict (``verdict.decide``) a pair of files gets. The section shows its
result as one Shapes layer (the panels found outlined thin grey, each repeated pair's matched
regions boxed in one colour and numbered) and one table row per repeated pair; it never
re-derives a verdict. The plain functions (``search_job``, ``plan_repeats``, ``pair_rows``,
``search_status``) work without a widget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Label, PushButton, Table
from qtpy.QtCore import Qt

from ._compat import prepare_torch_import
from ._layers import (
    META_KEY,
    Planned,
    box_to_rectangle,
    has_layer,
    n_leading,
    placement,
    plan_slots,
    remove_layers,
    tool_layers,
    unwrap,
)
from ._overlays import Source, warm_imports
from ._panel import plain_table, short, tip
from ._planes import Item, n_planes, plane_item, plane_tag, to_rgb
from ._state import MODEL, adopt_default, load_model
from ._workers import Progress, run_with_progress

TOOL = "repeats"
SLOT = "repeated panels"
PANEL_GREY = "#808080"
COLUMNS = ["#", "panels", "verdict", "decided by", "how"]


@dataclass
class RepeatsResult:
    """One image's search (``FigureSearch``) and where its layer goes."""

    source: Source
    search: Any
    """``bta_core.match.within.FigureSearch``: panels, every pair (ranked), note."""
    checkpoint: str | None = None
    """The model whose score the pairs carry; None: no model score."""
    loaded_model: Any = None
    """The bundled default model when this job had to load it (shared afterwards)."""


def figure_item(layer: Any, point: Any = None) -> Item:
    """The image of ``layer`` to search: the layer itself (grey or RGB), or the plane of a
    stack shown by the sliders, named as the Compare panel names planes (``stack[z=3]``)."""
    item = plane_item(layer, point)
    if n_planes(layer) > 1:
        item.name = f"{layer.name}[{plane_tag(layer, item.index)}]"
    return item


def search_job(
    item: Item,
    model: Any = None,
    with_model: bool = False,
    stop: threading.Event | None = None,
    checkpoint: str | None = None,
) -> Generator[Progress, None, RepeatsResult]:
    """Generator worker: (load the model,) then ``find_repeated_panels`` on ``item``, with its
    progress per pair and its ``should_stop`` polled between pairs."""
    stop = stop if stop is not None else threading.Event()
    loaded = scorer = policy = None
    if with_model:
        if model is None:
            model = loaded = yield from run_with_progress(load_model, stop=stop)
            checkpoint = "bundled default model"
        prepare_torch_import()
        from bta_core.assess import pair_scorer, policy_for

        scorer, policy = pair_scorer(model), policy_for(model)
        checkpoint = checkpoint or getattr(model, "checkpoint_path", None)
    from bta_core.match.within import find_repeated_panels

    warm_imports()
    rgb = to_rgb(item.data, item.is_rgb)
    search = yield from run_with_progress(
        find_repeated_panels, rgb, scorer=scorer, policy=policy, stop=stop
    )
    return RepeatsResult(item.source(), search, checkpoint if with_model else None, loaded)


def pair_colour(number: int) -> str:
    """The colour of repeated pair ``number`` (1-based), as the CLI's PNG draws it."""
    from bta_core.match.within import PALETTE

    return "#{:02x}{:02x}{:02x}".format(*PALETTE[(number - 1) % len(PALETTE)])


def pair_boxes(pair: Any) -> tuple[tuple, tuple]:
    """What is boxed for a pair: its matched regions, else its two panels (figure pixels)."""
    return (pair.region_a or pair.panel_a, pair.region_b or pair.panel_b)


def plan_repeats(viewer: Any, result: RepeatsResult, provenance: dict) -> list[Callable[[], Any]]:
    """The layer updates that show ``result``: one Shapes layer over the searched plane (panels
    thin grey; each repeated pair's two boxes in its colour, numbered, ``same`` thicker than
    ``suspect``). It replaces the last search's layer in place; none when no panel was found
    (the last one is then removed)."""
    src, search = result.source, result.search
    if not search.panels or not has_layer(viewer, src.layer):
        return plan_slots(viewer, TOOL, [], slots=(SLOT,))
    lead = n_leading(src.layer)
    side = max(search.shape)
    thick, thin = max(2.0, side / 250), max(1.0, side / 500)
    rects, colours, widths, labels, numbers, roles = [], [], [], [], [], []
    for box in search.panels:
        rects.append(box_to_rectangle(box, lead))
        colours.append(PANEL_GREY)
        widths.append(max(1.0, side / 1000))
        labels.append("")
        numbers.append(0)
        roles.append("panel")
    for k, pair in enumerate(search.repeated, 1):
        for role, box in zip("AB", pair_boxes(pair), strict=True):
            rects.append(box_to_rectangle(box, lead))
            colours.append(pair_colour(k))
            widths.append(thick if pair.decision.is_same else thin)
            labels.append(f"#{k}")
            numbers.append(k)
            roles.append(role)
    kwargs = placement(src.layer, src.index, src.shape)
    kwargs.update(
        shape_type="rectangle",
        features={"pair": numbers, "role": roles, "label": labels, "colour": colours},
        edge_color=colours,
        edge_width=widths,
        face_color="transparent",
        text={
            "string": "{label}",
            "color": {"feature": "colour"},
            "anchor": "upper_left",
            "size": 12,
            "translation": [0.0] * lead + [thick + 2, thick + 2],
        },
        metadata={META_KEY: {**provenance, "overlay": True, "image": src.name, **search.to_dict()}},
    )
    name = f"BTA repeated panels: {src.name}"
    return plan_slots(viewer, TOOL, [Planned(SLOT, name, rects, "shapes", kwargs)], slots=(SLOT,))


def pair_rows(search: Any) -> list[list[str]]:
    """One table row per repeated pair, strongest first: its number (as drawn), the two panels
    (1-based, reading order), the core's verdict, what decided it, and how B looks."""
    return [
        [
            str(k),
            f"{p.index_a + 1} ~ {p.index_b + 1}",
            p.decision.verdict,
            p.decision.decided_by,
            p.how(),
        ]
        for k, p in enumerate(search.repeated, 1)
    ]


def pair_line(pair: Any, number: int) -> str:
    """Short text for one pair: its number, panels and the core's explanation
    (``describe_pair`` without the pixel boxes)."""
    return f"#{number} panels {pair.index_a + 1} ~ {pair.index_b + 1}: {pair.explain()}"


def search_status(name: str, search: Any) -> str:
    """The status line after a search: "no panels found", or the counts as the CLI prints them."""
    from bta_core.match.within import describe_counts

    if not search.panels:
        return f"Repeated panels in {name}: no panels found (no gutters detected)"
    note = f" ({search.note})" if search.note and len(search.panels) < 2 else ""
    return f"Repeated panels in {name}: {describe_counts(search)}{note}"


class RepeatsSection:
    """The Compare panel's "Find repeated panels" section: a button, the model option and the
    table of repeated pairs. It runs on the panel's worker controls (progress bar, Cancel)."""

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        """The ``ComparePanel`` (its layer list, worker controls, status line)."""
        self.title = tip(
            Label(value="<b>Repeated panels inside one image</b>"),
            "Cut image A (the first image selected above) into its panels and check every "
            "pair of panels, as bta-core match FIG does",
        )
        self.button = tip(
            PushButton(text="Find repeated panels"),
            "Look for a panel shown twice inside the first selected image (as it is, "
            "mirrored, turned, cropped, rescaled or with other contrast)",
        )
        self.with_model = tip(
            CheckBox(text="with model score (suspect only)", value=False),
            "Also score each pair of panels with the loaded model (the bundled default when "
            "none is loaded): it can only add 'suspect' verdicts; off by default, as panels "
            "of one figure look alike by construction",
        )
        self.table = tip(
            Table(value={"data": [], "index": [], "columns": COLUMNS}),
            "One row per repeated pair (numbered as on the image); click a row to select "
            "and zoom to its two boxes",
        )
        self.table.read_only = True
        plain_table(self.table, stretch=False, stretch_columns=(4,))
        self.table.native.verticalHeader().setVisible(False)
        self.table.native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.native.setMinimumHeight(80)
        self.table.native.setMaximumHeight(120)  # the panel fits a laptop screen
        self.detail = tip(
            Label(value=""),
            "The core's verdict and why for the chosen pair; hover a row for its whole line "
            "(boxes in pixels), as bta-core match FIG prints it",
        )
        self.result: RepeatsResult | None = None
        self.button.changed.connect(lambda *_: self.run())
        self.table.native.cellClicked.connect(lambda row, _col: self.show_pair(row))

    @property
    def widgets(self) -> list[Any]:
        return [self.title, self.button, self.with_model, self.table, self.detail]

    def target_layer(self) -> Any:
        """Image A: the first image selected in the panel's list (in layer-list order), else the
        viewer's active image layer; None when there is neither."""
        from napari.layers import Image

        from ._layers import is_overlay

        viewer = self.panel._viewer
        chosen = set(self.panel._layers.value)
        for layer in viewer.layers:
            if layer.name in chosen:
                return layer
        active = viewer.layers.selection.active
        return active if isinstance(active, Image) and not is_overlay(active) else None

    def run(self) -> Any:
        """Start the search on image A in the panel's worker (None when busy or no image)."""
        from napari.utils.notifications import show_error

        panel = self.panel
        if panel.busy:
            return None
        layer = self.target_layer()
        if layer is None:
            show_error("Select an image layer to look for repeated panels in")
            return None
        try:
            item = figure_item(layer, panel._viewer.dims.point)
        except Exception as exc:
            show_error(f"Cannot search this layer: {exc}")
            return None
        worker = panel.controls.start(
            search_job,
            item,
            MODEL.model,
            bool(self.with_model.value),
            checkpoint=MODEL.source,
            on_return=self._show,
            on_cancel=lambda _exc: self._drop_layer(),
            description="Finding repeated panels",
        )
        if worker is not None:
            self.clear()
            worker.errored.connect(lambda _exc: self._drop_layer())
        return worker

    def clear(self) -> None:
        """Forget the last search: its result and table rows."""
        self.result = None
        self.table.value = {"data": [], "index": [], "columns": COLUMNS}
        self.detail.value = ""

    def _drop_layer(self) -> None:
        """A cancelled or failed search leaves no layer of an earlier one without its table."""
        viewer = self.panel._viewer
        remove_layers(viewer, tool_layers(viewer, TOOL, (SLOT,)))

    def _show(self, result: RepeatsResult) -> None:
        from bta_core.match.within import describe_pair

        from ._overlays import provenance

        adopt_default(result.loaded_model)
        result.loaded_model = None
        self.result = result
        search = result.search
        self.table.value = {
            "data": pair_rows(search),
            "index": [str(k) for k in range(1, len(search.repeated) + 1)],
            "columns": COLUMNS,
        }
        from ._panel import size_columns

        size_columns(self.table)
        self.table.native.horizontalHeader().setMinimumSectionSize(24)
        native = self.table.native
        for row, pair in enumerate(search.repeated):
            line = describe_pair(pair, row + 1)
            for col in range(native.columnCount()):
                cell = native.item(row, col)
                if cell is not None:
                    cell.setToolTip(line)
            cell = native.item(row, 0)
            if cell is not None:
                from qtpy.QtGui import QColor

                cell.setBackground(QColor(pair_colour(row + 1)))
                cell.setForeground(QColor("white"))
        self.detail.value = pair_line(search.repeated[0], 1) if search.repeated else ""
        prov = provenance([result.source.name], None, result.checkpoint)
        self.panel.layer_updates.run(plan_repeats(self.panel._viewer, result, prov))
        self.panel._status.value = search_status(short(result.source.name, 40), search)

    def layer(self) -> Any:
        """The search's Shapes layer, if it is still in the viewer."""
        found = tool_layers(self.panel._viewer, TOOL, (SLOT,))
        return found[0] if found else None

    def show_pair(self, row: int) -> None:
        """Select repeated pair ``row``'s two boxes in the layer and zoom the view onto them."""
        layer, result = self.layer(), self.result
        if layer is None or result is None or not 0 <= row < len(result.search.repeated):
            return
        first = len(result.search.panels) + 2 * row
        if first + 1 >= len(layer.data):
            return
        self.detail.value = pair_line(result.search.repeated[row], row + 1)
        viewer = unwrap(self.panel._viewer)
        viewer.layers.selection.active = unwrap(layer)
        layer.mode = "select"
        layer.selected_data = {first, first + 1}
        corners = np.concatenate([np.asarray(layer.data[k])[:, -2:] for k in (first, first + 1)])
        scale = np.asarray(layer.scale, float)[-2:]
        shift = np.asarray(layer.translate, float)[-2:]
        lo = corners.min(axis=0) * scale + shift
        hi = (corners.max(axis=0) + 1) * scale + shift
        camera = view_camera(viewer)
        camera.center = tuple((lo + hi) / 2)
        canvas = np.asarray(viewer.canvas.size, float)
        camera.zoom = float(0.9 * np.min(canvas / np.maximum(hi - lo, 1e-9)))


def view_camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
