"""Run core calls that report through callbacks as generator workers that napari can stop.

``bta_core`` takes ``on_progress(step, total, info)`` and ``should_stop()`` callbacks. A generator
worker has to *yield* progress, so the call runs in a helper thread and its callbacks go through a
queue that the generator drains: each ``Progress`` it yields is a point where ``worker.quit()``
takes effect, and the stop flag reaches the core call at its next step.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """One progress report from a running core call."""

    step: int
    total: int
    info: dict = field(default_factory=dict)


class Cancelled(Exception):
    """The user stopped the work."""


def _is_cancellation(exc: BaseException) -> bool:
    """Core calls stop with ``InterruptedError`` or a ``...Cancelled`` exception of their own."""
    return isinstance(exc, (InterruptedError, KeyboardInterrupt, Cancelled)) or type(
        exc
    ).__name__.endswith("Cancelled")


def run_with_progress(
    fn: Callable[..., Any],
    *args: Any,
    stop: threading.Event | None = None,
    poll_s: float = 0.1,
    **kwargs: Any,
) -> Generator[Progress, None, Any]:
    """Call ``fn(*args, on_progress=..., should_stop=..., **kwargs)``, yielding ``Progress``.

    Returns ``fn``'s result (via ``StopIteration.value``), re-raises its error, and raises
    ``Cancelled`` when ``stop`` was set before ``fn`` finished. Closing the generator (napari's
    ``worker.quit()``) sets ``stop`` and waits for ``fn`` to return at its next step.
    """
    stop = stop or threading.Event()
    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    done = object()

    def target() -> None:
        try:
            outcome["value"] = fn(
                *args,
                on_progress=lambda step, total, info=None: reports.put(
                    Progress(int(step), int(total), dict(info or {}))
                ),
                should_stop=stop.is_set,
                **kwargs,
            )
        except BaseException as exc:  # handed to the generator's caller
            outcome["error"] = exc
        finally:
            reports.put(done)

    thread = threading.Thread(
        target=target, name=f"napari-bta {getattr(fn, '__name__', 'work')}", daemon=True
    )
    thread.start()
    try:
        while True:
            try:
                item = reports.get(timeout=poll_s)
            except queue.Empty:
                yield Progress(-1, -1, {})  # a heartbeat: lets quit() act while fn is busy
                continue
            if item is done:
                break
            yield item
    finally:
        if thread.is_alive():
            stop.set()
            thread.join()
    error = outcome.get("error")
    if stop.is_set() and (error is None or _is_cancellation(error)):
        raise Cancelled("stopped by the user")
    if error is not None:
        raise error
    return outcome.get("value")


class WorkError(Exception):
    """A ``RuntimeError`` raised by the work, re-raised under a type napari's worker reports.

    superqt's worker treats a ``RuntimeError`` as "the Qt object was deleted": it only warns and
    emits neither ``errored`` nor ``finished``, which would leave the panel busy forever.
    """


def _reporting_errors(gen_fn: Callable[..., Generator]) -> Callable[..., Generator]:
    def wrapped(*args: Any, **kwargs: Any) -> Generator:
        try:
            return (yield from gen_fn(*args, **kwargs))
        except RuntimeError as exc:
            raise WorkError(str(exc)) from exc

    wrapped.__name__ = getattr(gen_fn, "__name__", "work")
    return wrapped


class WorkerControls:
    """Wire a generator worker to a Run button, a Cancel button, a status label and a progress bar.

    Run is disabled while busy; Cancel sets the stop flag and quits the worker; errors go to
    ``napari.utils.notifications.show_error``.
    """

    def __init__(self, run_button: Any, cancel_button: Any, status: Any, description: str) -> None:
        self.run_button = run_button
        self.cancel_button = cancel_button
        self.status = status
        self.description = description
        self.worker: Any = None
        self.stop = threading.Event()
        self._pbar: Any = None
        self.cancel_button.enabled = False
        self.cancel_button.changed.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        gen_fn: Callable[..., Generator],
        *args: Any,
        on_yield: Callable[[Any], None] | None = None,
        on_return: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Start ``gen_fn(*args, stop=..., **kwargs)`` in a napari thread worker and return it."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        if self.busy:
            return None
        self.stop = threading.Event()
        worker = thread_worker(_reporting_errors(gen_fn), start_thread=False)(
            *args, stop=self.stop, **kwargs
        )
        self.worker = worker
        self._pbar = progress(total=0, desc=self.description)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"{self.description}..."

        def yielded(item: Any) -> None:
            if isinstance(item, Progress) and item.total > 0 and self._pbar is not None:
                if self._pbar.total != item.total:
                    self._pbar.total = item.total
                self._pbar.n = item.step
                self._pbar.refresh()
                extra = ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in item.info.items()
                )
                self.status.value = f"{self.description}: {item.step}/{item.total}" + (
                    f" ({extra})" if extra else ""
                )
            if on_yield is not None:
                on_yield(item)

        def returned(value: Any) -> None:
            self.status.value = f"{self.description}: done"
            if on_return is not None:
                on_return(value)

        def errored(exc: BaseException) -> None:
            if isinstance(exc, Cancelled):
                self.status.value = f"{self.description}: cancelled"
                return
            from napari.utils.notifications import show_error

            logging.getLogger("napari_bta").error(
                "%s failed", self.description, exc_info=(type(exc), exc, exc.__traceback__)
            )
            self.status.value = f"{self.description}: failed"
            show_error(f"{self.description} failed: {exc}")

        # napari relays worker errors as raw tracebacks; this panel posts one clear message instead
        with contextlib.suppress(TypeError, RuntimeError):
            worker.errored.disconnect()
        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(
            lambda: setattr(self.status, "value", f"{self.description}: cancelled")
        )
        worker.finished.connect(self._finished)
        worker.start()
        return worker

    def _finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def cancel(self, *_: Any) -> None:
        """Ask the running work to stop at its next step."""
        self.stop.set()
        if self.worker is not None:
            self.worker.quit()

    def close(self) -> None:
        """Stop the worker when the widget closes."""
        self.cancel()
