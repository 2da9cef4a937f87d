"""The one place in the window that shows what the shared model host holds.

``HostStatusButton(services)`` is a small status-bar button ("1 model loaded ·
320 MB"); its popup lists the loaded models by name with the memory each load
took, which ones a pane is using, the host process's memory, and an Unload
button per model. The figures are the host's own accounting
(``GET /v1/host/status``), read off the UI thread every few seconds while the
host runs.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Qt, QThreadPool, QTimer, Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.format import human_size
from app.ui.services import Services
from app.ui.widgets.status_line import StatusLine

#: Seconds between two readings of the host's status while it runs.
POLL_S = 3.0


def summary(status: dict[str, Any] | None) -> str:
    """The button's text for a status reading (None: no host running)."""
    if not status:
        return "No model loaded"
    copies = int(status.get("loaded_copies") or 0)
    if copies == 0:
        return "No model loaded"
    noun = "model" if copies == 1 else "models"
    return f"{copies} {noun} loaded · {human_size(int(status.get('loaded_bytes') or 0))}"


class _Relay(QObject):
    status = Signal(object)  # dict | None, from the reader thread


class HostStatusPopup(QFrame):
    """What the host holds, one row per loaded model, each with Unload."""

    def __init__(self, button: HostStatusButton) -> None:
        super().__init__(button, Qt.WindowType.Popup)
        self.button = button
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumWidth(380)
        lay = QVBoxLayout(self)
        self.header = QLabel()
        self.header.setWordWrap(True)
        lay.addWidget(self.header)
        self.rows = QGridLayout()
        self.rows.setColumnStretch(0, 1)
        lay.addLayout(self.rows)
        self.note = QLabel(
            "A model no pane uses is unloaded after a while without requests, or when "
            "another model needs the memory."
        )
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: palette(placeholder-text);")
        lay.addWidget(self.note)
        self.status_line = StatusLine(self)
        lay.addWidget(self.status_line)
        self.unload_buttons: dict[str, QPushButton] = {}

    def show_status(self, status: dict[str, Any] | None) -> None:
        while self.rows.count():
            item = self.rows.takeAt(0)
            w = item.widget() if item is not None else None
            if w is not None:
                w.deleteLater()
        self.unload_buttons = {}
        if not status:
            self.header.setText(
                "<b>Model host</b><br>Not running: it starts with the first chat, agent run or arena."
            )
            return
        rss = human_size(int(status.get("rss_bytes") or 0))
        budget = status.get("memory_budget_bytes")
        limit = f" · budget {human_size(int(budget))}" if budget else ""
        self.header.setText(f"<b>Model host</b> · process memory {rss}{limit}")
        leased = self.button.services.host.leased()
        shown: set[int] = set()
        row = 0
        for m in status.get("models") or []:
            if not m.get("loaded") or m.get("weights") in shown:
                continue
            shown.add(m.get("weights"))
            name = str(m["id"])
            # every name that shares this copy (a model with several templates)
            sharing = [
                x["id"] for x in status.get("models") or [] if x.get("weights") == m.get("weights")
            ]
            in_use = any(leased.get(x) for x in sharing)
            label = QLabel(self.button.services.host.display_name(name))
            label.setToolTip("\n".join(sharing))
            size = QLabel(human_size(int(m.get("bytes") or 0)))
            use = QLabel("in use" if in_use else "idle")
            unload = QPushButton("Unload")
            unload.setToolTip("Free its memory now; the next request loads it again.")
            unload.clicked.connect(lambda _=False, n=name: self.button.unload(n))
            self.unload_buttons[name] = unload
            for col, w in enumerate((label, size, use, unload)):
                self.rows.addWidget(w, row, col)
            row += 1
        if row == 0:
            none = QLabel("No model is loaded.")
            self.rows.addWidget(none, 0, 0)


class HostStatusButton(QToolButton):
    """Status-bar button: how many models the shared host holds and their memory."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.setAutoRaise(True)
        self.setToolTip("The model host shared by Chat, Agents and Arena: what it holds.")
        self.setText(summary(None))
        self.last_status: dict[str, Any] | None = None
        self.popup = HostStatusPopup(self)
        self._relay = _Relay(self)
        self._relay.status.connect(self._on_status)
        self._reading = False
        self.clicked.connect(self.show_popup)
        self.timer = QTimer(self)
        self.timer.setInterval(int(POLL_S * 1000))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    def refresh(self) -> None:
        """Read the host's status on a thread (at most one reading at a time)."""
        if self._reading:
            return
        host = self.services.host
        if not host.running:
            if self.last_status is not None or self.text() != summary(None):
                self._on_status(None)
            return
        self._reading = True

        def read() -> None:
            try:
                status = host.status()
            except Exception:  # a host that went away reads as none
                status = None
            self._relay.status.emit(status)

        # A pool thread: starting a new thread waits until it runs (103 ms on a loaded
        # machine, found by the journey's watchdog); queueing a callable does not.
        QThreadPool.globalInstance().start(read)

    def _on_status(self, status: dict[str, Any] | None) -> None:
        self._reading = False
        self.last_status = status
        self.setText(summary(status))
        if self.popup.isVisible():
            self.popup.show_status(status)

    def show_popup(self) -> None:
        self.popup.show_status(self.last_status)
        self.popup.adjustSize()
        pos = self.mapToGlobal(self.rect().topLeft())
        self.popup.move(pos.x(), pos.y() - self.popup.sizeHint().height())
        self.popup.show()
        self.refresh()

    def unload(self, name: str) -> None:
        """Unload a model now, off the UI thread, then read the status again."""
        host = self.services.host
        self.services.actions.run(
            self.popup,
            f"Unloading {host.display_name(name)}",
            lambda _progress: host.unload(name),
            done=lambda _unloaded: self.refresh(),
            status=self.popup.status_line,
        )

    def shutdown(self) -> None:
        self.timer.stop()
