"""One line next to an action's buttons: busy (with progress and Cancel), done, or failed.

Errors are shown here, next to what the user did, and never below the visible
part of a scrolling form: on an error the line scrolls itself into view.
"""

from __future__ import annotations

import html
import traceback

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QWidget,
)

from app.core.errors import DemoAIError


def describe(exc: BaseException) -> tuple[str, str, str]:
    """(message, what to do, details) for any exception."""
    if isinstance(exc, DemoAIError):
        return exc.message, exc.hint or "", str(exc)
    return (
        f"{type(exc).__name__}: {exc}",
        "This is unexpected; please report it with the details.",
        "".join(traceback.format_exception(exc)),
    )


class StatusLine(QWidget):
    """States: hidden (idle), busy, ok, error. ``cancel_requested`` fires on Cancel."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("statusLine")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 2, 0, 2)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(160)
        self.bar.setTextVisible(False)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self._cancel)
        self.details = QPushButton("Details…")
        self.details.clicked.connect(self._show_details)
        for w in (self.label, self.bar, self.cancel, self.details):
            lay.addWidget(w)
        self.state = "idle"
        self._exc: BaseException | None = None
        self._clear_timer = QTimer(self)
        self._clear_timer.setSingleShot(True)
        self._clear_timer.timeout.connect(self.clear)
        self.clear()

    # -- states ---------------------------------------------------------------------
    def clear(self) -> None:
        self.state = "idle"
        self._exc = None
        self.label.clear()
        self.bar.hide()
        self.cancel.hide()
        self.details.hide()
        self.hide()

    def busy(self, text: str, *, cancellable: bool = False) -> None:
        self._clear_timer.stop()
        self.state = "busy"
        self._exc = None
        self.label.setStyleSheet("")
        self.label.setText(html.escape(text) + "…")
        self.bar.setRange(0, 0)  # indeterminate until a total is known
        self.bar.show()
        self.cancel.setEnabled(True)
        self.cancel.setVisible(cancellable)
        self.details.hide()
        self.show()

    def progress(self, done: float, total: float | None, text: str = "") -> None:
        if self.state != "busy":
            return
        if total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * min(max(done / total, 0.0), 1.0)))
        if text:
            self.label.setText(html.escape(text))

    def ok(self, text: str, *, clear_after_ms: int = 8000) -> None:
        self.state = "ok"
        self._exc = None
        self.label.setStyleSheet("")
        self.label.setText("✓ " + html.escape(text))
        self.bar.hide()
        self.cancel.hide()
        self.details.hide()
        self.show()
        if clear_after_ms:
            self._clear_timer.start(clear_after_ms)

    def error(self, exc: BaseException | str, hint: str = "") -> None:
        self._clear_timer.stop()
        self.state = "error"
        if isinstance(exc, BaseException):
            message, hint, _ = describe(exc)
            self._exc = exc
        else:
            message, self._exc = exc, None
        text = f"<b>{html.escape(message)}</b>"
        if hint:
            text += f"<br>{html.escape(hint)}"
        self.label.setStyleSheet("color: #d93025;")
        self.label.setText(text)
        self.bar.hide()
        self.cancel.hide()
        self.details.setVisible(self._exc is not None)
        self.show()
        QTimer.singleShot(0, self.ensure_visible)

    @property
    def text(self) -> str:
        """The plain text shown (for tests and accessibility)."""
        doc = self.label.text().replace("<br>", "\n")
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", doc))

    # -- helpers -----------------------------------------------------------------------
    def ensure_visible(self) -> None:
        """Scroll every enclosing scroll area so this line is on screen."""
        w: QWidget | None = self.parentWidget()
        while w is not None:
            if isinstance(w, QScrollArea):
                w.ensureWidgetVisible(self, 0, 20)
            w = w.parentWidget()

    def _cancel(self) -> None:
        self.cancel.setEnabled(False)
        self.label.setText(self.label.text().rstrip("…") + " — cancelling…")
        self.cancel_requested.emit()

    def _show_details(self) -> None:
        if self._exc is not None:
            from app.ui.qt_errors import show_error

            show_error(self.window(), "Details", self._exc)
