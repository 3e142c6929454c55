"""Run core calls as generator workers that really stop, with a progress bar inside the panel.

``bta_core`` takes ``on_progress(step, total, info)`` and ``should_stop()`` callbacks. A generator
worker has to *yield*, so the core call runs in a helper thread and its callbacks go through a
queue that the generator drains. Stopping never abandons that thread: Cancel sets the stop flag,
the core call raises at its next check, and the worker ends only after the helper thread has
ended; a worker asked to quit (napari does that at exit) sets the same flag and waits too.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from superqt.utils import GeneratorWorker

from bta_core.runtime import INPUT_ERRORS

LOG = logging.getLogger("napari_bta")
CLOSE_WAIT_S = 60.0
"""How long closing a panel waits for its work to stop (one training step, one matching stage)."""


@dataclass
class Progress:
    """One progress report from a running core call (``total <= 0``: a heartbeat)."""

    step: int
    total: int
    info: dict = field(default_factory=dict)


class Cancelled(Exception):
    """The user stopped the work; the message says what was kept (e.g. a saved checkpoint)."""


def _is_cancellation(exc: BaseException) -> bool:
    """Core calls stop with ``bta_core.runtime.Cancelled`` (an ``InterruptedError``)."""
    return isinstance(exc, (InterruptedError, KeyboardInterrupt, Cancelled))


def run_with_progress(
    fn: Callable[..., Any],
    *args: Any,
    stop: threading.Event | None = None,
    poll_s: float = 0.05,
    **kwargs: Any,
) -> Generator[Progress, None, Any]:
    """Call ``fn(*args, on_progress=..., should_stop=..., **kwargs)`` in a helper thread.

    Yields ``Progress`` (and a heartbeat every ``poll_s``); returns ``fn``'s result, re-raises its
    error, or raises ``Cancelled`` (with the core's message) when ``stop`` was set. However the
    generator ends (also when it is closed), it sets nothing itself but always waits for the
    helper thread, so no computation outlives it.
    """
    stop = stop if stop is not None else threading.Event()
    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    done = object()

    def report(step: int, total: int, info: dict | None = None) -> None:
        reports.put(Progress(int(step), int(total), dict(info or {})))

    def target() -> None:
        try:
            outcome["value"] = fn(*args, on_progress=report, should_stop=stop.is_set, **kwargs)
        except BaseException as exc:  # handed to the generator's caller
            outcome["error"] = exc
        finally:
            reports.put(done)

    name = f"napari-bta {getattr(fn, '__name__', 'work')}"
    thread = threading.Thread(target=target, name=name, daemon=False)
    HELPERS.add(thread)
    thread.start()
    try:
        while True:
            try:
                item = reports.get(timeout=poll_s)
            except queue.Empty:
                yield Progress(-1, -1, {})  # a heartbeat
                continue
            if item is done:
                break
            yield item
    finally:
        if thread.is_alive():  # closed early (worker quit): stop the core call and wait for it
            stop.set()
            thread.join()
    error = outcome.get("error")
    if error is not None and _is_cancellation(error):
        raise Cancelled(str(error) or "stopped by the user") from error
    if error is not None:
        raise error
    if stop.is_set():
        raise Cancelled("stopped by the user")
    return outcome.get("value")


class _Helpers:
    """The helper threads started here (tests assert that none is left running)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def add(self, thread: threading.Thread) -> None:
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def alive(self) -> list[threading.Thread]:
        return [t for t in self._threads if t.is_alive()]


HELPERS = _Helpers()


_RUNNING: set[StoppableWorker] = set()


def stop_all(timeout_s: float = CLOSE_WAIT_S) -> None:
    """Stop every running plugin worker and wait for it (at exit: no thread is left computing
    while Python or Qt shut down, which aborted the process before)."""
    running = list(_RUNNING)
    for worker in running:
        worker.stop_event.set()
    for worker in running:
        worker.done.wait(timeout_s)
    if running:  # let Qt's pool threads finish their own clean-up of those workers
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(1000)


def _stop_at_exit() -> None:
    """Run ``stop_all`` when the app quits and before Python joins its threads at exit."""
    register = getattr(threading, "_register_atexit", None)  # runs before non-daemon joins
    if register is not None:
        register(stop_all)
    else:  # pragma: no cover
        import atexit

        atexit.register(stop_all)


_stop_at_exit()


class WorkError(Exception):
    """A ``RuntimeError`` of the work under a type that superqt reports.

    superqt treats a ``RuntimeError`` from a worker as "the Qt object was deleted": it only warns
    and emits neither ``errored`` nor ``finished``, which would leave the panel busy forever.
    The original error is its ``__cause__``.
    """


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error a ``WorkError`` carries) names a bad input
    (``bta_core.runtime.INPUT_ERRORS``): its message says it all, so it is logged as one line."""
    if isinstance(exc, WorkError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return isinstance(exc, INPUT_ERRORS)


class StoppableWorker(GeneratorWorker):
    """A generator worker whose ``quit()`` also sets the stop flag and whose end closes the
    generator in its own thread, so the core call and its helper thread have ended by the time
    ``finished`` is emitted; ``done`` is set then (``close`` waits on it)."""

    def __init__(self, func: Callable[..., Generator], *args: Any, **kwargs: Any) -> None:
        self.stop_event: threading.Event = kwargs["stop"]
        self.done = threading.Event()
        super().__init__(func, *args, **kwargs)

    def quit(self) -> None:
        self.stop_event.set()
        super().quit()

    def run(self) -> None:
        """Qt's entry point; ``done`` is set only after the last signal has been emitted, so
        nothing of this thread touches Qt or Python objects once a waiter goes on (at exit,
        emitting while the interpreter shut down crashed the process)."""
        _RUNNING.add(self)
        try:
            super().run()
        finally:
            _RUNNING.discard(self)
            self.done.set()

    def work(self) -> Any:
        try:
            result = super().work()
            if isinstance(result, RuntimeError):  # see WorkError
                raise WorkError(str(result)) from result
            return result
        finally:
            with contextlib.suppress(Exception):
                self._gen.close()  # runs the generator's finally: waits for the helper thread


class WorkerControls:
    """Wire a generator worker to Run/Cancel buttons, a status label and the panel's progress bar.

    Run stays disabled (``busy``) until the worker thread has ended; Cancel sets the stop flag the
    core polls; errors go to ``napari.utils.notifications.show_error``; ``close`` stops and waits.
    """

    def __init__(
        self,
        run_buttons: Any,
        cancel_button: Any,
        status: Any,
        progress_bar: Any,
        description: str,
    ) -> None:
        self.run_buttons = (
            list(run_buttons) if isinstance(run_buttons, list | tuple) else [run_buttons]
        )
        self.cancel_button = cancel_button
        self.status = status
        self.bar = progress_bar
        self.description = description
        self.worker: StoppableWorker | None = None
        self.current = description
        """What the running (or last) work is called in the status line."""
        self.stop = threading.Event()
        self.closed = False
        self.cancel_button.enabled = False
        self.cancel_button.changed.connect(self.cancel)
        self.bar.visible = False

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        gen_fn: Callable[..., Generator],
        *args: Any,
        on_return: Callable[[Any], None] | None = None,
        on_cancel: Callable[[Cancelled], None] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        description: str | None = None,
        **kwargs: Any,
    ) -> StoppableWorker | None:
        """Start ``gen_fn(*args, stop=..., **kwargs)`` in a thread worker (None while busy).

        ``on_yield`` gets what the work yields besides ``Progress`` (a partial result to show);
        ``on_finished`` runs when the work has ended in any way (not after the panel closed).
        """
        if self.busy or self.closed:
            return None
        what = self.current = description or self.description
        self.stop = threading.Event()
        worker = StoppableWorker(gen_fn, *args, stop=self.stop, **kwargs)
        self.worker = worker
        for button in self.run_buttons:
            button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"{what}..."
        self.bar.visible = True
        self.bar.min, self.bar.max, self.bar.value = 0, 0, 0  # busy indicator until a total

        def yielded(item: Any) -> None:
            if self.worker is not worker or self.closed:
                return
            if not isinstance(item, Progress):
                if on_yield is not None:
                    on_yield(item)
                return
            if item.total <= 0:
                return
            self.bar.max = item.total
            self.bar.value = min(item.step, item.total)
            stage = item.info.get("stage")
            extra = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in item.info.items()
                if k != "stage"
            )
            text = f"{what}: {stage + ' ' if stage else ''}{item.step}/{item.total}"
            self.status.value = text + (f" ({extra})" if extra else "")

        def returned(value: Any) -> None:
            if self.closed:  # a closed panel never acts on late results
                return
            self.status.value = f"{what}: done"
            if on_return is not None:
                on_return(value)

        def errored(exc: BaseException) -> None:
            if self.closed:
                return
            if isinstance(exc, Cancelled):
                self.status.value = f"{what}: cancelled ({exc})"
                if on_cancel is not None:
                    on_cancel(exc)
                return
            from napari.utils.notifications import show_error

            if is_input_error(exc):  # a bad file or value: its message says it all
                LOG.warning("%s failed: %s", what, exc)
            else:  # a bug: keep the traceback for the report
                LOG.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
            self.status.value = f"{what}: failed: {exc}"
            show_error(f"{what} failed: {exc}")

        # napari relays worker errors as raw tracebacks; the panel posts one clear message instead
        with contextlib.suppress(TypeError, RuntimeError):
            worker.errored.disconnect()
        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(lambda: setattr(self.status, "value", f"{what}: cancelled"))
        worker.finished.connect(lambda: self._finished(worker))
        if on_finished is not None:
            worker.finished.connect(lambda: None if self.closed else on_finished())
        _quit_stops_workers()
        worker.start()
        return worker

    def _finished(self, worker: StoppableWorker) -> None:
        if self.worker is not worker:
            return
        self.worker = None
        with contextlib.suppress(RuntimeError):  # the panel may be gone
            self.bar.visible = False
            for button in self.run_buttons:
                button.enabled = True
            self.cancel_button.enabled = False

    def cancel(self, *_: Any) -> None:
        """Ask the running work to stop at the core's next check (the panel stays busy until then)."""
        if self.worker is not None:
            self.stop.set()
            self.status.value = f"{self.current}: stopping..."

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> bool:
        """Stop the work and wait for its thread to end; True when nothing is left running."""
        self.closed = True
        worker = self.worker
        if worker is None:
            return True
        self.stop.set()
        ended = worker.done.wait(timeout_s)
        if not ended:
            LOG.warning("%s: work still running %.0f s after close", self.description, timeout_s)
        return ended


def _quit_stops_workers() -> None:
    """Connect the Qt application's ``aboutToQuit`` to ``stop_all`` (once)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None and not getattr(app, "_napari_bta_stop_all", False):
        app.aboutToQuit.connect(stop_all)
        app._napari_bta_stop_all = True
