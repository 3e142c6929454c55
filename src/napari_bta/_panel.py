"""What every panel shares: a scroll area that fits small screens, a progress bar, tooltips,
fixed-point numbers, and stopping its work when the panel is closed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy

from ._layers import GradualLayers
from ._workers import WorkerControls

MIN_WIDTH = 340
"""Width (px) at which every panel's buttons show their whole label ("Choose directory")."""
MIN_VISIBLE_HEIGHT = 140
"""Height (px) a docked panel keeps however many panels share the dock area."""


def fmt(value: float | None, digits: int = 3) -> str:
    """Fixed-point text for a score (``0.088``); an em dash for a missing value."""
    return "\u2014" if value is None else f"{float(value):.{digits}f}"


def short(text: str, limit: int = 22) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis in the middle, so the distinct end
    of a name (``_t04.png``, ``[c=1]``) stays (the full text goes in a tooltip)."""
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 2
    return text[: limit - 1 - tail] + "\u2026" + text[len(text) - tail :]


def plain_table(table: Any, stretch: bool = True, stretch_columns: Sequence[int] = ()) -> None:
    """Show a magicgui Table's cells as given (its default re-formats numbers as 3.000e-03);
    columns share the width (``stretch``) or fit their contents (the table then scrolls);
    ``stretch_columns`` share what the others leave (file names, elided in the middle, so the
    verdict columns stay in view)."""
    from qtpy.QtWidgets import QHeaderView, QStyledItemDelegate

    native = table.native
    native.setItemDelegate(QStyledItemDelegate(native))
    mode = QHeaderView.ResizeMode.Stretch if stretch else QHeaderView.ResizeMode.ResizeToContents
    native.horizontalHeader().setSectionResizeMode(mode)
    table.stretch_columns = tuple(stretch_columns)  # kept for size_columns after new values
    size_columns(table)
    native.setWordWrap(False)
    native.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep a file name's distinct end


MIN_COLUMN = 56
"""Pixels a stretched column keeps at least (a few characters each side of the ellipsis)."""


def size_columns(table: Any) -> None:
    """Let the table's ``stretch_columns`` share the width the others leave; call again after
    setting the table's value (magicgui rebuilds the columns and their sizing)."""
    from qtpy.QtWidgets import QHeaderView

    header = table.native.horizontalHeader()
    header.setMinimumSectionSize(MIN_COLUMN)
    for col in getattr(table, "stretch_columns", ()):
        if col < header.count():
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Stretch)


def _in_layout(layout: Any, widget: Any) -> Any:
    """``widget`` or the wrapper (label row) that holds it in ``layout``; None if not there."""
    for k in range(layout.count()):
        item = layout.itemAt(k).widget()
        if item is not None and (item is widget or item.isAncestorOf(widget)):
            return item
    return None


def tip(widget: Any, text: str) -> Any:
    """Set a tooltip on a magicgui widget and return it (for inline use)."""
    widget.tooltip = text
    return widget


class Panel(QScrollArea):
    """A dock panel: a magicgui form inside a scroll area, with Run/Cancel/progress/status.

    ``controls`` runs the panel's work; when napari removes the panel from its dock (the close
    button, ``remove_dock_widget``) the work is stopped and waited for, and ``on_close``
    callbacks (e.g. disconnecting viewer events) run.
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer = viewer
        self.layer_updates = GradualLayers()
        self._cancel = tip(PushButton(text="Cancel"), "Stop the running work at its next step")
        self._progress = tip(ProgressBar(value=0, min=0, max=1), "Progress of the running work")
        self._status = tip(Label(value=""), "What the panel is doing, or its last result")
        self._status.native.setWordWrap(True)
        self._closers: list[Callable[[], None]] = [self.layer_updates.clear]
        self._closed = False

    @property
    def busy(self) -> bool:
        """True while work runs or its result layers are still being added."""
        return self.controls.busy or self.layer_updates.pending

    def setup(
        self,
        widgets: Sequence[Any],
        run_buttons: Sequence[PushButton],
        description: str,
        grow: Any = None,
    ) -> None:
        """Lay out ``widgets`` above Cancel, the progress bar and the status line; ``grow`` (a
        results table) takes the height the panel has to spare, else empty space does."""
        self.form = Container(widgets=[*widgets, self._cancel, self._progress, self._status])
        layout = self.form.native.layout()
        target = None if grow is None else _in_layout(layout, grow.native)
        if target is None:
            layout.addStretch(1)
        else:
            layout.setStretchFactor(target, 1)
            # the panel's width, never the columns' (the panel does not scroll sideways)
            grow.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.setWidget(self.form.native)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setMinimumWidth(MIN_WIDTH)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # wrap, not scroll
        for widget in self.form:
            if isinstance(widget, Label):
                widget.native.setWordWrap(True)  # magicgui's fixed width grew the dock
                widget.native.setSizePolicy(
                    QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred
                )
                widget.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.controls = WorkerControls(
            list(run_buttons), self._cancel, self._status, self._progress, description
        )

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """The form's own size, so a dock area shares its height by what each panel holds."""
        form = self.widget()
        if form is None:
            return super().sizeHint()
        hint = form.sizeHint()
        return QSize(max(self.minimumWidth(), hint.width()), hint.height() + 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """At least ``MIN_VISIBLE_HEIGHT`` (or the whole form, if smaller): docked beside other
        panels, a panel is never squeezed to a strip that shows none of its controls."""
        form = self.widget()
        height = 0 if form is None else form.sizeHint().height()
        return QSize(self.minimumWidth(), min(height, MIN_VISIBLE_HEIGHT))

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the panel is closed."""
        self._closers.append(fn)

    def connect_layer_events(self, callback: Callable[..., None]) -> None:
        """Call ``callback`` when layers are added, removed, moved or renamed (disconnected on
        close), so a panel's layer choices follow the layer list."""
        events = self._viewer.layers.events
        for name in ("inserted", "removed", "moved"):
            getattr(events, name).connect(callback)
            self.on_close(lambda name=name: getattr(events, name).disconnect(callback))

        def follow(event: Any) -> None:
            event.value.events.name.connect(callback)

        def unfollow(event: Any) -> None:
            event.value.events.name.disconnect(callback)

        for layer in self._viewer.layers:
            layer.events.name.connect(callback)
        events.inserted.connect(follow)
        events.removed.connect(unfollow)

        def stop_following() -> None:
            events.inserted.disconnect(follow)
            events.removed.disconnect(unfollow)
            for layer in self._viewer.layers:
                layer.events.name.disconnect(callback)

        self.on_close(stop_following)

    def shutdown(self) -> bool:
        """Stop the work and wait for it; returns True when nothing is left running."""
        if self._closed:
            return True
        self._closed = True
        ended = self.controls.close()
        for fn in self._closers:
            with contextlib.suppress(Exception):
                fn()
        return ended

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and not self._closed:
            self.shutdown()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.shutdown()
        super().closeEvent(event)
