"""Runtime helpers shared by every long job: the progress callback type and one cancellation error.

The core never imports Qt: a caller passes ``on_progress(step, total, info)`` and a
``should_stop()`` callable; long loops call :func:`check_cancel` and raise :class:`Cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, dict], None]
"""``on_progress(step, total, info)``: ``info`` holds at least ``{"stage": str}``."""
StopFn = Callable[[], bool]

INPUT_ERRORS = (FileNotFoundError, ValueError, RuntimeError)
"""Errors that name a bad input (a file, checkpoint or value) in their message, which says it
all: ``ImageReadError`` is a ValueError, ``CheckpointError`` a RuntimeError. The CLI prints them
as one line (exit 1), the napari panels log them as one line."""


class Cancelled(InterruptedError):
    """A job stopped because its ``should_stop()`` returned True (work saved so far is kept)."""


def check_cancel(should_stop: StopFn | None, what: str = "job") -> None:
    """Raise :class:`Cancelled` when ``should_stop()`` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"{what} cancelled")
