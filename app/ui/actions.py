"""The action layer: every UI action that changes data runs through one runner.

``services.actions.run(owner, title, fn, changes=..., done=..., status=...)``
runs ``fn(progress)`` on a worker thread, shows it in a :class:`StatusLine`
next to the action (busy, progress, Cancel, then done or the error with what
to do), calls ``done(result)`` on the UI thread, and broadcasts what changed
(``services.bus.changed``), so panes refresh themselves. Nothing that writes
runs on the UI thread.

Modelled on Anki's "ops": one place for threading, errors and change
notification instead of an ad-hoc mechanism per pane.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot
from PySide6.QtWidgets import QWidget

from app.core.errors import DemoAIError
from app.ui.widgets.status_line import StatusLine

T = TypeVar("T")


class Cancelled(DemoAIError):
    """The user cancelled the action."""

    def __init__(self) -> None:
        super().__init__("Cancelled.")


class Progress:
    """Handed to an action's function: report progress, notice cancellation."""

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay
        self._cancel = threading.Event()

    def update(self, done: float, total: float | None = None, text: str = "") -> None:
        self._relay.progress.emit(float(done), None if total is None else float(total), text)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` when the user asked to stop."""
        if self._cancel.is_set():
            raise Cancelled()


class _Relay(QObject):
    """Lives on the UI thread: signals emitted by the worker are queued to it."""

    progress = Signal(float, object, str)
    finished = Signal(object, object)  # result, exception

    def __init__(self) -> None:
        super().__init__()
        self.callback: Callable[[Any, BaseException | None], None] | None = None
        self.finished.connect(self._deliver)

    @Slot(object, object)
    def _deliver(self, result: Any, error: BaseException | None) -> None:
        if self.callback is not None:
            self.callback(result, error)


class ActionHandle(QRunnable, Generic[T]):
    """One running action. ``cancel()`` asks its function to stop (it checks ``progress``)."""

    def __init__(self, fn: Callable[[Progress], T]) -> None:
        super().__init__()
        self.setAutoDelete(False)
        self.relay = _Relay()
        self.progress = Progress(self.relay)
        self._fn = fn
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        self.progress._cancel.set()

    def run(self) -> None:
        try:
            self.result = self._fn(self.progress)
        except BaseException as exc:  # shown to the user, never lost
            self.error = exc
        finally:
            self.done.set()
            self.relay.finished.emit(self.result, self.error)


class ActionRunner(QObject):
    """Runs actions off the UI thread; one instance per window (``services.actions``)."""

    #: (title, exception) of every failed action, for logs and tests.
    failed = Signal(str, object)

    def __init__(self, broadcast: Callable[[frozenset[str]], Any]) -> None:
        super().__init__()
        self._broadcast = broadcast
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(4)
        self.running: set[ActionHandle[Any]] = set()

    def run(
        self,
        owner: QWidget | None,
        title: str,
        fn: Callable[[Progress], T],
        *,
        changes: Iterable[str] = (),
        done: Callable[[T], Any] | None = None,
        failed: Callable[[BaseException], Any] | None = None,
        status: StatusLine | None = None,
        cancellable: bool = False,
        ok_text: str | None = None,
    ) -> ActionHandle[T]:
        """Start ``fn(progress)``; see the module docstring."""
        handle: ActionHandle[T] = ActionHandle(fn)
        topics = frozenset(changes)
        if status is not None:
            status.busy(title, cancellable=cancellable)
            status.progress(0, None)
            status.cancel_requested.connect(handle.cancel)
            handle.relay.progress.connect(status.progress)

        def finished(result: Any, error: BaseException | None) -> None:
            self.running.discard(handle)
            if status is not None:
                try:
                    status.cancel_requested.disconnect(handle.cancel)
                except (RuntimeError, TypeError):
                    pass
            alive = owner is None or _alive(owner)
            if error is None:
                if alive and status is not None and _alive(status):
                    if ok_text:
                        status.ok(ok_text)
                    else:
                        status.clear()
                if alive and done is not None:
                    done(result)
            else:
                self.failed.emit(title, error)
                if alive and status is not None and _alive(status):
                    if isinstance(error, Cancelled):
                        status.ok("Cancelled.")
                    else:
                        status.error(error)
                if alive and failed is not None:
                    failed(error)
            # Broadcast even after a failure: a partial change (a cancelled import) is real.
            self._broadcast(topics)

        handle.relay.callback = finished
        self.running.add(handle)
        self._pool.start(handle)
        return handle

    def wait_all(self, timeout_ms: int = 30000) -> bool:
        """Wait for running actions (the window's close)."""
        return bool(self._pool.waitForDone(timeout_ms))


def _alive(widget: QObject) -> bool:
    try:
        from shiboken6 import isValid

        return bool(isValid(widget))
    except ImportError:  # pragma: no cover - shiboken ships with PySide6
        return True
