"""Scan panel: the core scan's pairs of a folder, its verdicts in its order; a row opens the pair.

The table shows each ``bta_core.scan.Pair`` as the scan decided and ranked it; the panel never
re-ranks or re-decides. A row click replaces the previous pair's layers with this pair and
localises it (``bta_core.match``) for the overlays.
"""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, FileEdit, Label, PushButton, SpinBox, Table

from ._compat import prepare_torch_import
from ._layers import META_KEY, Planned, plan_slots, remove_layers, tool_layers
from ._overlays import OVERLAY_SLOTS, Source, plan_pair, provenance, warm_imports
from ._panel import Panel, fmt, plain_table, size_columns, tip
from ._state import MODEL, adopt_default, load_model
from ._workers import Progress, run_with_progress

if TYPE_CHECKING:
    import napari

GAP_PX = 16
MAX_ROWS = 500
VERIFY_PER_IMAGE = 3
"""``bta_core.scan.pipeline.DEFAULT_VERIFY_PER_IMAGE`` (a test checks they agree): importing the
pipeline here would load torch when the panel opens."""
IMAGE_SLOTS = ("image A", "image B")
COLUMNS = ["A", "B", "verdict", "decided by", "P(same)"]
"""File names first: in a narrow dock they are what a reader looks for."""


def pair_verdict(pair: Any) -> tuple[str, str]:
    """The verdict and deciding evidence the scan recorded for a ``bta_core.scan.Pair``, with
    "+ local edits" when the copy differs locally from its source (``bta_core.match.edits``)."""
    edits = getattr(pair.decision.evidence, "local_edits", None)
    return str(pair.verdict), str(pair.decided_by) + (" + local edits" if edits else "")


def scan_job(
    folders: Sequence[str],
    model: Any,
    out_dir: str,
    stop: threading.Event | None = None,
    **options: Any,
) -> Generator[Progress, None, tuple[Any, Any]]:
    """Generator worker: (load the default model,) then ``bta_core.scan.scan``.

    Returns ``(scan result, the model loaded here or None)``.
    """
    loaded = None
    if model is None:
        model = loaded = yield from run_with_progress(load_model, stop=stop)
    prepare_torch_import()
    from bta_core.scan import scan

    result = yield from run_with_progress(
        scan, list(folders), model=model, out_dir=out_dir, stop=stop, **options
    )
    return result, loaded


@dataclass
class PairImages:
    """The two decoded images of a scan pair: ``localise_job`` yields them before it matches,
    so the pair opens while the localisation runs."""

    a: np.ndarray
    b: np.ndarray


def localise_job(
    path_a: str, path_b: str, stop: threading.Event | None = None
) -> Generator[Progress | PairImages, None, tuple[Any, np.ndarray | None]]:
    """Generator worker: decode the pair (files, or planes named as the scan names them,
    ``stack.tif[z=3]``), yield it, then where it matches (``match_images``) and B warped into
    A's frame. Decoding here keeps the row click from freezing napari (0.3-1.3 s per pair)."""
    from bta_core.imageio import load_named
    from bta_core.match import match_images, warp_b_to_a

    warm_imports()

    a, b = load_named(path_a), load_named(path_b)
    yield PairImages(a, b)
    match = yield from run_with_progress(match_images, a, b, stop=stop)
    aligned = warp_b_to_a(b, match, a.shape[:2]) if match.transform is not None else None
    return match, aligned


def layer_name(role: str, path: str) -> str:
    """``A: <file>`` (or ``B: ...``): the layer a scan pair's image opens as."""
    return f"{role}: {Path(path).name}"


def open_pair(viewer: Any, path_a: str, path_b: str, images: PairImages) -> list[Source]:
    """Show A and B (B to the right of A) in the previous scan pair's image layers, renamed
    and updated in place, and hide that pair's overlays until the new ones reuse them.

    Removing layers makes napari collect garbage (0.5-1.4 s frozen per row click with torch
    loaded); only a layer that cannot take the new image goes, in one batch."""
    for layer in tool_layers(viewer, "scan", OVERLAY_SLOTS):
        layer.visible = False  # the old pair's: wrong until plan_pair updates them
    items, x = [], 0.0
    for role, path, rgb in (("A", path_a, images.a), ("B", path_b, images.b)):
        meta = {META_KEY: {"path": str(path), "role": role}}
        kwargs = {"rgb": True, "translate": (0.0, x), "scale": (1.0, 1.0), "metadata": meta}
        items.append(Planned(f"image {role}", layer_name(role, path), rgb, "image", kwargs))
        x += rgb.shape[1] + GAP_PX
    layers = [op() for op in plan_slots(viewer, "scan", items, slots=IMAGE_SLOTS)][1:]
    return [
        Source(ly.name, ly, (), tuple(it.data.shape[:2]))
        for it, ly in zip(items, layers, strict=True)
    ]


def drop_hidden_overlays(viewer: Any) -> None:
    """Remove the scan's overlays (in one batch) when a pair opened but was not localised
    (cancelled or failed): they are the previous pair's, hidden by ``open_pair``."""
    remove_layers(viewer, tool_layers(viewer, "scan", OVERLAY_SLOTS))


def _open_url(path: str) -> bool:
    from qtpy.QtCore import QUrl
    from qtpy.QtGui import QDesktopServices

    return bool(QDesktopServices.openUrl(QUrl.fromLocalFile(path)))


class ScanPanel(Panel):
    """Scan a folder; the core's pairs go to a table; a click opens the pair with overlays."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._folder = tip(
            FileEdit(label="Folder", mode="d", value=""),
            "Folder of images to scan (searched recursively)",
        )
        self._reference = tip(
            FileEdit(label="Reference (optional)", mode="d", value=""),
            "Optional folder (e.g. a lab archive): every folder x reference pair is scored too",
        )
        self._out = tip(
            FileEdit(label="Output (optional)", mode="d", value=""),
            "Where pairs.csv, skipped.csv and report.html go (default: a temporary folder)",
        )
        self._top = tip(
            SpinBox(label="Pairs listed", min=1, max=100000, value=50),
            "The scan lists every pair above the model's threshold and at least this many best pairs",
        )
        self._tta = tip(
            CheckBox(text="Also match rotated/flipped copies (slower)", value=False),
            "Score each pair as the best of the 8 rotations/flips",
        )
        self._planes = tip(
            CheckBox(text="Scan planes separately", value=False),
            "Each Z/T plane and each channel of a stack is its own image, compared with the "
            "other files' and with its own stack's (bta-core scan --planes --within-files); "
            "off, a stack is one image: its first Z/T plane, channels merged",
        )
        self._verify = tip(
            SpinBox(label="Verify per image", min=0, max=100, value=VERIFY_PER_IMAGE),
            "Keypoint matching checks this many best model candidates of every image, plus as "
            "many partners with the most local-feature votes, for a shared region (0: none; "
            "about 0.05-0.3 s per pair on a CPU)",
        )
        self._run = tip(PushButton(text="Scan"), "Scan the folder in the background")
        self._table = tip(
            Table(value={"data": [], "index": [], "columns": COLUMNS}),
            "The scan's pairs, best first; click a row to open the pair with its overlays",
        )
        self._table.read_only = True
        plain_table(self._table, stretch=False, stretch_columns=(0, 1, 3))
        self._verdict = tip(Label(value=""), "The scan's verdict of the opened pair")
        self._skipped_btn = tip(
            PushButton(text="Show skipped files"), "List the files the scan could not read, and why"
        )
        self._report_btn = tip(
            PushButton(text="Open report.html"), "Open the scan's HTML report in the web browser"
        )
        self.setup(
            [
                self._folder,
                self._reference,
                self._out,
                self._top,
                self._tta,
                self._planes,
                self._verify,
                self._run,
                self._table,
                self._verdict,
                self._skipped_btn,
                self._report_btn,
            ],
            [self._run],
            "Scanning",
            grow=self._table,
        )
        self._table.native.setMinimumHeight(180)
        self._verdict.native.setWordWrap(True)
        self._skipped_btn.enabled = self._report_btn.enabled = False
        self.result: Any = None
        self.summary = ""
        self.pairs: list[Any] = []
        self.skipped_dialog: Any = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._run.changed.connect(lambda *_: self.run())
        self._skipped_btn.changed.connect(lambda *_: self.show_skipped())
        self._report_btn.changed.connect(lambda *_: self.open_report())
        self._table.native.cellClicked.connect(lambda row, _col: self.open_row(row))

    def run(self, folder: str | None = None) -> Any:
        """Scan ``folder`` (default: the panel's) in a worker."""
        from napari.utils.notifications import show_error

        folder = folder or str(self._folder.value)
        if folder in ("", ".") or not Path(folder).is_dir():
            problem = "Choose a folder of images to scan" + (
                "" if folder in ("", ".") else f": {folder} is not a folder"
            )
            self._status.value = problem  # not the last run's result
            show_error(problem)
            return None
        ref = str(self._reference.value)
        reference = None
        if ref not in ("", "."):
            if not Path(ref).is_dir():  # refused before the last scan's results are touched
                problem = f"Reference folder not found: {ref} (clear the field to scan without)"
                self._status.value = problem
                show_error(problem)
                return None
            reference = [ref]
        out = str(self._out.value)
        self._clear_results()  # a new scan (its temporary folder replaces the last report)
        if out in ("", "."):
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-bta-scan-")
            out = self._tmp.name
        self._folder_scanned = folder
        return self.controls.start(
            scan_job,
            [folder],
            MODEL.model,
            out,
            reference=reference,
            tta="d4" if self._tta.value else None,
            planes=bool(self._planes.value),
            verify_per_image=int(self._verify.value),
            top_k=int(self._top.value),
            on_return=self._show,
        )

    def _clear_results(self) -> None:
        """Forget the last scan's table, opened pair and buttons: a cancelled or failed scan
        must not leave them standing under its status, as if they were its own."""
        self.result, self.pairs = None, []
        self._table.value = {"data": [], "index": [], "columns": COLUMNS}
        size_columns(self._table)
        self._verdict.value = ""
        self._skipped_btn.enabled = self._report_btn.enabled = False

    def _show(self, value: tuple[Any, Any]) -> None:
        result, loaded = value
        adopt_default(loaded)
        self.result = result
        self.pairs = list(getattr(result, "pairs", []) or [])
        shown = self.pairs[:MAX_ROWS]
        self._table.value = {
            "data": [
                [
                    Path(p.path_a).name,
                    Path(p.path_b).name,
                    *pair_verdict(p),
                    fmt(p.decision.probability),
                ]
                for p in shown
            ],
            "index": [str(k + 1) for k in range(len(shown))],
            "columns": COLUMNS,
        }
        size_columns(self._table)
        table = self._table.native
        for row, p in enumerate(shown):
            for col, text in ((0, p.path_a), (1, p.path_b), (3, pair_verdict(p)[1])):
                cell = table.item(row, col)
                if cell is not None:
                    cell.setToolTip(str(text))
        skipped = list(getattr(result, "skipped", []) or [])
        n_images = len(getattr(result, "items", []) or [])
        if n_images == 0 and not skipped:
            self._status.value = f"No images found in {self._folder_scanned}"
        else:
            more = (
                f" (first {MAX_ROWS} shown; all in the report)"
                if len(self.pairs) > MAX_ROWS
                else ""
            )
            from bta_core.scan.groups import copy_groups, groups_text, listed_groups

            verdicts = Counter(p.verdict for p in self.pairs)
            groups = getattr(result, "groups", None) or copy_groups(self.pairs)
            if not listed_groups(groups):
                groups = []  # every group a pair: the pairs say it (as the console does)
            self._status.value = (
                f"Scanned {n_images} images: {verdicts['same']} same, "
                f"{verdicts['suspect']} suspect; {len(self.pairs)} pairs listed{more}"
                + (f"; {groups_text(groups)}" if groups else "")
                + (
                    f", {len(skipped)} file{'s' if len(skipped) > 1 else ''} skipped"
                    if skipped
                    else ""
                )
            )
        self.summary = self._status.value
        self._skipped_btn.enabled = bool(skipped)
        self._report_btn.enabled = self.report_path() is not None

    def report_path(self) -> str | None:
        """The scan's report.html, when it exists."""
        out = getattr(self.result, "out_dir", None)
        path = Path(out) / "report.html" if out else None
        return str(path) if path is not None and path.is_file() else None

    def open_report(self) -> bool:
        """Open report.html in the system's browser."""
        path = self.report_path()
        return _open_url(path) if path else False

    def skipped_text(self) -> str:
        """One line per skipped file: its full path and the problem."""
        skipped = getattr(self.result, "skipped", []) or []
        return "\n".join(f"{s.path}: {s.problem}" for s in skipped)

    def show_skipped(self) -> Any:
        """A window listing the skipped files (selectable text, so it can be copied)."""
        from qtpy.QtWidgets import QDialog, QPlainTextEdit, QVBoxLayout

        dialog = QDialog(self)
        dialog.setWindowTitle("BTA scan: skipped files")
        text = QPlainTextEdit(self.skipped_text())
        text.setReadOnly(True)
        QVBoxLayout(dialog).addWidget(text)
        dialog.resize(700, 300)
        dialog.show()
        self.skipped_dialog = dialog
        return dialog

    def open_row(self, row: int) -> Any:
        """Open pair ``row`` as layers (replacing the previous pair) and localise it; the images
        are decoded in the worker and open as soon as they are, the overlays when matched."""
        if not 0 <= row < len(self.pairs):
            return None
        if self.busy:  # one job at a time: say so rather than drop the click silently
            self._status.value = (
                f"Busy with the running job: click pair {row + 1} again when it is done, "
                "or press Cancel"
            )
            return None
        pair = self.pairs[row]
        names = (layer_name("A", pair.path_a), layer_name("B", pair.path_b))
        verdict, decided_by = pair_verdict(pair)
        text = f"{names[0]} vs {names[1]}\nScan verdict: {pair.decision.explain()}"
        text += f"\nModel score {fmt(pair.score)}"
        self._verdict.value = text
        prov = {
            **provenance(names, None, MODEL.source),
            "verdict": verdict,
            "decided_by": decided_by,
        }
        opened: list[Source] = []
        localised: list[bool] = []

        def decoded(item: Any) -> None:
            if isinstance(item, PairImages):
                opened[:] = open_pair(self._viewer, pair.path_a, pair.path_b, item)

        def finished() -> None:
            if opened and not localised:
                drop_hidden_overlays(self._viewer)

        def shown(value: tuple[Any, Any]) -> None:
            from bta_core.match import summary

            localised.append(True)
            match, aligned = value
            self._verdict.value = text + f"\nLocalisation: {summary(match)}"
            self._status.value = f"{self.summary}; pair {row + 1} opened"
            if len(opened) == 2:
                ops, _ = plan_pair(self._viewer, "scan", *opened, match, aligned, prov)
                self.layer_updates.run(ops)

        return self.controls.start(
            localise_job,
            pair.path_a,
            pair.path_b,
            on_return=shown,
            on_yield=decoded,
            on_finished=finished,
            description="Localising",
        )
