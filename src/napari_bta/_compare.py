"""Compare panel: model scores across image layers (or the planes of one stack), and the core's
verdict for one pair with its overlays.

The verdict is ``bta_core.assess.assess_pair`` (fingerprints, model score, keypoint
verification, then ``bta_core.verdict.decide``): the same function ``bta-core score --verify``
uses. The panel shows its result and never re-derives "same" from a score and a threshold.
The plain functions (``layer_items``, ``compare_job``, ``compare_items``) work without a widget.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Label, PushButton, Select, Table

from ._compat import prepare_torch_import
from ._layers import is_overlay
from ._overlays import plan_pair, provenance, warm_imports
from ._panel import Panel, fmt, plain_table, short, tip
from ._planes import Item, layer_items, to_rgb
from ._repeats import RepeatsSection
from ._state import MODEL, adopt_default, load_model
from ._workers import Progress, run_with_progress

if TYPE_CHECKING:
    import napari


@dataclass
class CompareResult:
    """Model scores across items, and the core's assessment of one pair."""

    names: list[str]
    matrix: np.ndarray
    pair: tuple[int, int]
    decision: Any
    """``bta_core.verdict.Decision`` of the pair, from ``assess_pair``."""
    threshold: float
    checkpoint: str | None
    match: Any = None
    aligned: np.ndarray | None = None
    loaded_model: Any = None
    """The bundled default model when this job had to load it (shared afterwards)."""
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        i, j = self.pair
        return float(self.matrix[i, j])


def first_pair(model: Any, rgbs: Sequence[np.ndarray], matrix: np.ndarray) -> tuple[int, int]:
    """The pair to assess first: the core's ranking (``rank_key``) of every pair's decision
    from the cheap evidence (identical pixels, D4 perceptual hash, model score)."""
    from bta_core.assess import policy_for
    from bta_core.fingerprint import fingerprint, pair_phash
    from bta_core.verdict import Evidence, decide, rank_key

    policy = policy_for(model)
    prints = [fingerprint(rgb) for rgb in rgbs]
    best, best_key = (0, 1), None
    for i in range(len(rgbs)):
        for j in range(i + 1, len(rgbs)):
            distance, orientation = pair_phash(prints[i], prints[j])
            evidence = Evidence(
                model_score=float(matrix[i, j]),
                identical_pixels=prints[i].pixel_hash == prints[j].pixel_hash,
                phash_distance=distance,
                phash_orientation=orientation,
            )
            key = rank_key(decide(evidence, policy))
            if best_key is None or key > best_key:
                best, best_key = (i, j), key
    return best


def compare_job(
    model: Any,
    items: Sequence[Item],
    pair: tuple[int, int] | None = None,
    matrix: np.ndarray | None = None,
    stop: threading.Event | None = None,
    checkpoint: str | None = None,
) -> Generator[Progress, None, CompareResult]:
    """Generator worker: (load the default model,) score every pair, assess one pair."""
    stop = stop if stop is not None else threading.Event()
    if len(items) < 2:
        raise ValueError("choose two or more image layers, or one layer with several planes")
    loaded = None
    if model is None:
        model = loaded = yield from run_with_progress(load_model, stop=stop)
        checkpoint = "bundled default model"
    prepare_torch_import()
    import torch

    from bta_core.assess import assess_pair

    warm_imports()

    for item in items:
        if item.rgb is None:
            item.rgb = to_rgb(item.data, item.is_rgb)
    rgbs = [item.rgb for item in items]
    if matrix is None:
        from bta_core.model import embed_images

        z = yield from run_with_progress(embed_images, model, rgbs, 8, stop=stop)
        with torch.no_grad():
            z = z.to(model.device)
            matrix = model.score_matrix(z, z).float().cpu().numpy()
    if pair is None:
        pair = first_pair(model, rgbs, matrix)
    i, j = pair
    assessment = yield from run_with_progress(assess_pair, model, rgbs[i], rgbs[j], stop=stop)
    aligned = None
    match = assessment.match
    if match is not None and match.transform is not None:
        from bta_core.match import warp_b_to_a

        aligned = np.asarray(warp_b_to_a(rgbs[j], match, rgbs[i].shape[:2]))
    return CompareResult(
        names=[it.name for it in items],
        matrix=np.asarray(matrix, dtype=np.float32),
        pair=(i, j),
        decision=assessment.decision,
        threshold=float(model.config.threshold),
        checkpoint=checkpoint or getattr(model, "checkpoint_path", None),
        match=match,
        aligned=aligned,
        loaded_model=loaded,
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


def verdict_text(names: Sequence[str], decision: Any, threshold: float, match: Any) -> str:
    """The core's verdict and why, then the model score and the localisation."""
    a, b = names
    ev = decision.evidence
    uncalibrated = ev.model_probability is None and ev.model_score is not None
    lines = [
        f"{a} vs {b}",
        f"Verdict: {decision.explain()}",
        f"Model score {fmt(ev.model_score)} (threshold {fmt(threshold)}), "
        f"P(same source) {fmt(decision.probability)}"
        + (" (raw score: model not calibrated)" if uncalibrated else ""),
    ]
    if match is not None:
        from bta_core.match import summary

        lines.append(f"Localisation: {summary(match)}")
    return "\n".join(lines)


def _inferno_hex(values: np.ndarray) -> list[str]:
    from napari.utils.colormaps import ensure_colormap

    rgba = ensure_colormap("inferno").map(np.clip(values.ravel(), 0, 1))
    return ["#{:02x}{:02x}{:02x}".format(*(int(255 * c) for c in px[:3])) for px in rgba]


class ComparePanel(Panel):
    """Pick image layers (or one stack), score every pair, assess and overlay one pair."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._layers = tip(
            Select(label="Images", choices=self._image_layer_names, allow_multiple=True),
            "Two or more image layers (the plane shown by the sliders is used), or one stack "
            "layer to compare its planes with each other",
        )
        self._run = tip(
            PushButton(text="Compare"),
            "Score every pair with the model, then give the verdict of the best-ranked pair "
            "(fingerprints, model score and keypoint verification)",
        )
        self._verdict = tip(Label(value=""), "The core's verdict for the pair and why")
        self._table = tip(
            Table(value={"data": [], "index": [], "columns": []}),
            "Model score P(same source) of every pair; click a cell to assess that pair",
        )
        self._table.read_only = True
        plain_table(self._table, stretch=False)  # scores readable; many images scroll
        self._table.native.verticalHeader().setMaximumWidth(130)
        self.repeats = RepeatsSection(self)
        self.setup(
            [self._layers, self._run, self._verdict, self._table, *self.repeats.widgets],
            [self._run, self.repeats.button],
            "Comparing",
        )
        self._layers.native.setMaximumHeight(120)
        self._verdict.native.setWordWrap(True)
        self._table.native.setMinimumHeight(150)
        self.items: list[Item] = []
        self.result: CompareResult | None = None
        self._run.changed.connect(lambda *_: self.run())
        self._table.native.cellClicked.connect(self._cell_clicked)
        self.connect_layer_events(self._refresh)
        self._status.value = "Select 2+ image layers, or one stack to compare its planes"

    def _image_layer_names(self, *_: Any) -> list[str]:
        from napari.layers import Image

        return [
            ly.name for ly in self._viewer.layers if isinstance(ly, Image) and not is_overlay(ly)
        ]

    def _refresh(self, *_: Any) -> None:
        self._layers.reset_choices()

    def run(self, pair: tuple[int, int] | None = None) -> Any:
        """Score the selected layers and assess the best-ranked pair (or ``pair``).

        With ``pair`` after an earlier run, the scores are kept and only that pair is assessed.
        A new comparison clears the last one's table and verdict at once: cancelled or failed,
        it leaves none standing for a click to combine with the new layers.
        """
        from napari.utils.notifications import show_error

        if self.controls.busy:
            return None
        matrix, items = None, self.items
        if pair is None or self.result is None:
            names = list(self._layers.value)
            try:
                items = layer_items(
                    [self._viewer.layers[n] for n in names], self._viewer.dims.point
                )
            except Exception as exc:
                show_error(f"Cannot compare these layers: {exc}")
                return None
            if len(items) < 2:
                show_error("Choose two or more image layers, or one layer with several planes")
                return None
            pair = None
        else:
            matrix = self.result.matrix
        worker = self.controls.start(
            compare_job,
            MODEL.model,
            items,
            pair,
            matrix,
            checkpoint=MODEL.source,
            on_return=lambda result: self._show(result, items),
        )
        if worker is not None and matrix is None:
            self._clear_results()
        return worker

    def _clear_results(self) -> None:
        """Forget the last comparison: its items, scores, table and verdict."""
        self.items, self.result = [], None
        self._table.value = {"data": [], "index": [], "columns": []}
        self._verdict.value = ""

    def _cell_clicked(self, row: int, col: int) -> None:
        if self.result is not None and row != col and not self.controls.busy:
            self.run(pair=(min(row, col), max(row, col)))

    def _show(self, result: CompareResult, items: list[Item]) -> None:
        from napari.utils.notifications import show_info

        adopt_default(result.loaded_model)
        result.loaded_model = None
        self.items, self.result = items, result  # always set together
        self._fill_table(result)
        i, j = result.pair
        names = (result.names[i], result.names[j])
        self._verdict.value = verdict_text(names, result.decision, result.threshold, result.match)
        a, b = items[i].source(), items[j].source()
        prov = provenance(names, result.decision, result.checkpoint)
        ops, notes = plan_pair(self._viewer, "compare", a, b, result.match, result.aligned, prov)
        self.layer_updates.run(ops)
        self._status.value = (
            f"Comparing: done; {result.decision.verdict} ({names[0]} vs {names[1]})"
        )
        for note in result.notes + notes:
            show_info(note)

    def _fill_table(self, result: CompareResult) -> None:
        from qtpy.QtGui import QColor

        matrix = result.matrix
        self._table.value = {
            "data": [
                [fmt(None) if i == j else fmt(v) for j, v in enumerate(row)]
                for i, row in enumerate(matrix)
            ],
            "index": [f"{k + 1} {short(name, 14)}" for k, name in enumerate(result.names)],
            "columns": [str(k + 1) for k in range(len(result.names))],
        }
        table = self._table.native
        n = matrix.shape[1]
        for k, hexcol in enumerate(_inferno_hex(matrix)):
            cell = table.item(k // n, k % n)
            if cell is None or k // n == k % n:  # an image with itself: no score shown
                continue
            cell.setBackground(QColor(hexcol))
            cell.setForeground(QColor("black" if matrix.flat[k] > 0.6 else "white"))
            cell.setToolTip(
                f"{result.names[k // n]} vs {result.names[k % n]}: model score "
                f"{fmt(matrix.flat[k])}; click to assess this pair"
            )
        for k, name in enumerate(result.names):
            for header in (table.verticalHeaderItem(k), table.horizontalHeaderItem(k)):
                if header is not None:
                    header.setToolTip(name)
