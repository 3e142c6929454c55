"""Progress bars on stderr for the stages a core call reports through ``on_progress``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

STAGE_UNITS = {
    "verify": "pair",
    "report": "pair",
    "fingerprints": "pair",
    "embed": "file",
    "keypoints": "image",
    "repeated panels": "image",
}
LOG_INTERVAL = 10.0
"""Seconds between redraws of a stage bar when stderr is not a terminal (a log file)."""


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


STAGE_LABELS = {"verify": "keypoint check", "report": "report", "keypoints": "local features"}


class StageBars:
    """An ``on_progress(step, total, info)`` callback drawing one tqdm bar per stage.

    ``skip`` names stages that already draw their own bar (the scan's ``embed`` and ``score``
    with ``progress_bar=True``). A bar closes when its stage reaches ``total`` or another stage
    starts; ``close()`` ends the last one.
    """

    def __init__(self, skip: Iterable[str] = (), enabled: bool = True) -> None:
        self.skip = set(skip)
        self.enabled = enabled
        self._stage: str | None = None
        self._bar: Any = None
        # a log file, not a terminal: redraw a bar at most every LOG_INTERVAL seconds, so the
        # log gets a few states per stage instead of one per step
        self._interval = 0.0 if _is_terminal(sys.stderr) else LOG_INTERVAL
        self._drawn = 0.0

    def __call__(self, step: int, total: int, info: dict | None = None) -> None:
        stage = str((info or {}).get("stage", "work"))
        if not self.enabled or stage in self.skip or total <= 0:
            return
        if stage != self._stage:
            self.close()
            from tqdm.auto import tqdm

            self._stage = stage
            # steps already done when the stage is first reported (resumed or cached work)
            # count as the start, so the rate is that of the work done while the bar shows
            self._bar = tqdm(
                total=total,
                initial=step,
                desc=STAGE_LABELS.get(stage, stage),
                unit=STAGE_UNITS.get(stage, "step"),
                dynamic_ncols=True,
            )
        self._bar.total = total
        self._bar.n = step
        now = time.monotonic()
        if step >= total:
            self.close()
        elif now - self._drawn >= self._interval:
            self._bar.refresh()
            self._drawn = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


class StepBar:
    """One bar for a short command whose steps are named stages (``bta-core score``):
    ``stage("loading model")`` before work without a callback, then ``on_progress``. Drawn only
    on a terminal, and cleared at the end, so scripts and logs see just the result."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    def stage(self, name: str, step: int | None = None) -> None:
        if self._bar is not None:
            self._bar.set_description(name)
            if step is not None:
                self._bar.n = step
            self._bar.refresh()

    def __call__(self, step: int, total: int, info: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.total = total + 1  # + the model loading step
            self.stage(str((info or {}).get("stage", "")), step + 1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
