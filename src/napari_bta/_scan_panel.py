"""Scan panel: find likely reused pairs in a folder; open a pair with the compare overlays."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton, SpinBox, Table

from ._compare import Item, compare_job, show_pair, verdict_text
from ._compat import prepare_torch_import
from ._state import MODEL
from ._workers import Progress, WorkerControls, run_with_progress

GAP_PX = 16


def _get(row: Any, key: str, default: Any = None) -> Any:
    if isinstance(row, dict):
        return row.get(key, default)
    return getattr(row, key, default)


def top_pairs(result: Any, n: int = 50) -> list[dict]:
    """The ``n`` best pairs of a scan result as plain dicts: verified overlaps first, then by score."""
    rows = [
        {
            "path_a": str(_get(r, "path_a")),
            "path_b": str(_get(r, "path_b")),
            "score": float(_get(r, "score", 0.0)),
            "same": bool(_get(r, "same", False)),
            "verified": bool(_get(r, "verified", False)),
        }
        for r in (_get(result, "pairs", None) or [])
    ]
    rows.sort(key=lambda r: (r["verified"], r["score"]), reverse=True)  # verified overlaps first
    return rows[:n]


def scan_job(
    folders: Sequence[str],
    model: Any,
    out_dir: str,
    tta: str | None = None,
    stop: threading.Event | None = None,
    reference: Sequence[str] | None = None,
    verify: int = 0,
) -> Generator[Progress, None, Any]:
    """Generator worker around ``bta_core.scan.scan``."""
    prepare_torch_import()
    from bta_core.scan import scan

    return (
        yield from run_with_progress(
            scan,
            list(folders),
            reference=list(reference) if reference else None,
            model=model,
            out_dir=out_dir,
            tta=tta,
            verify=verify,
            stop=stop,
        )
    )


def open_pair(viewer: Any, path_a: str, path_b: str) -> list[Item]:
    """Open both images as RGB layers, B placed to the right of A; returns them as compare items."""
    from bta_core.imageio import load_image

    items = []
    x = 0.0
    for role, path in (("A", path_a), ("B", path_b)):
        rgb = load_image(path)
        name = Path(path).name
        if role == "B" and name == items[0].name:
            name = f"{name} (B)"
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = rgb
            layer.translate = (0.0, x)
        else:
            layer = viewer.add_image(rgb, name=name, rgb=True, translate=(0.0, x))
        layer.metadata["napari_bta"] = {"tool": "scan", "path": str(path), "role": role}
        items.append(Item(name, rgb, layer))
        x += rgb.shape[1] + GAP_PX
    return items


class ScanPanel(Container):
    """Scan a folder; the top pairs go to a table; a click opens the pair with overlays."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = viewer
        self._folder = FileEdit(label="Folder", mode="d", value="")
        self._reference = FileEdit(label="Reference folder (optional)", mode="d", value="")
        self._out = FileEdit(label="Output folder (optional)", mode="d", value="")
        self._top = SpinBox(label="Top pairs", min=1, max=10000, value=50)
        self._tta = CheckBox(text="Also match rotated/flipped copies (slower)", value=False)
        self._verify = SpinBox(label="Verify best pairs (keypoints)", min=0, max=100000, value=100)
        self._run = PushButton(text="Scan")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="")
        self._verdict = Label(value="")
        self._table = Table(
            value={"data": [], "index": [], "columns": ["score", "same", "verified", "A", "B"]}
        )
        self._table.read_only = True
        super().__init__(
            widgets=[
                self._folder,
                self._reference,
                self._out,
                self._top,
                self._tta,
                self._verify,
                self._run,
                self._cancel,
                self._status,
                self._verdict,
                self._table,
            ]
        )
        self._verdict.native.setWordWrap(True)
        self.controls = WorkerControls(self._run, self._cancel, self._status, "Scanning")
        self.pairs: list[dict] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._run.changed.connect(self.run)
        self._table.native.cellClicked.connect(lambda row, _col: self.open_row(row))
        self.native.destroyed.connect(lambda *_: self.controls.close())

    def run(self, *_: Any, folder: str | None = None) -> Any:
        """Scan ``folder`` (default: the panel's) in a worker."""
        from napari.utils.notifications import show_error

        folder = folder or str(self._folder.value)
        if folder in ("", ".") or not Path(folder).is_dir():
            show_error(f"Choose a folder of images to scan (got {folder!r})")
            return None
        try:
            model = MODEL.get_or_load_default()
        except Exception as exc:
            show_error(f"No model: load one in the BTA Model panel ({exc})")
            return None
        out = str(self._out.value)
        if out in ("", "."):
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-bta-scan-")
            out = self._tmp.name
        tta = "d4" if self._tta.value else None
        ref = str(self._reference.value)
        reference = [ref] if ref not in ("", ".") and Path(ref).is_dir() else None
        return self.controls.start(
            scan_job,
            [folder],
            model,
            out,
            tta,
            reference=reference,
            verify=int(self._verify.value),
            on_return=self._show,
        )

    def _show(self, result: Any) -> None:
        self.pairs = top_pairs(result, int(self._top.value))
        self._table.value = {
            "data": [
                [
                    f"{p['score']:.3f}",
                    "yes" if p["same"] else "",
                    "yes" if p["verified"] else "",
                    Path(p["path_a"]).name,
                    Path(p["path_b"]).name,
                ]
                for p in self.pairs
            ],
            "index": [str(k + 1) for k in range(len(self.pairs))],
            "columns": ["score", "same", "verified", "A", "B"],
        }
        skipped = _get(result, "skipped", None) or []
        self._status.value = f"Scanning: done, {len(self.pairs)} pairs shown" + (
            f", {len(skipped)} files skipped" if skipped else ""
        )

    def open_row(self, row: int) -> Any:
        """Open pair ``row`` as layers and compute its overlays in a worker."""
        from napari.utils.notifications import show_error

        if not 0 <= row < len(self.pairs) or self.controls.busy:
            return None
        pair = self.pairs[row]
        try:
            items = open_pair(self._viewer, pair["path_a"], pair["path_b"])
            model = MODEL.get_or_load_default()
        except Exception as exc:
            show_error(f"Cannot open this pair: {exc}")
            return None
        matrix = np.array([[1.0, pair["score"]], [pair["score"], 1.0]], dtype=np.float32)

        def shown(result: Any) -> None:
            self._verdict.value = verdict_text(result)
            show_pair(self._viewer, result, items)

        return self.controls.start(compare_job, model, items, (0, 1), matrix, on_return=shown)
