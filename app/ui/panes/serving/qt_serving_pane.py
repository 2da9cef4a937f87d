"""Serving: live figures of a model server, for whoever keeps one running.

The source is this app's own model host, or a server added by address and key: a
``demoai serve`` instance or a deployed Docker bundle (they all run
``app.workers.host``). Once a second, while the pane is shown, a pool thread reads
the server's ``/metrics`` and recent requests (``app/core/serving.py``); the UI
thread only turns two readings into rates and draws them: requests and errors per
second, time to first token (median and 95th percentile over the interval),
generated tokens per second, requests in progress and waiting, the last five
minutes of each. The table lists the server's most recent requests (no prompt text:
the host never keeps it).

Keys of added servers are held only while the window is open. A server on another
machine is a network call: refused while the workspace is offline.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

import pyqtgraph as pg
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.serving import Figures, Reading, ServingError, figures, read_metrics, read_requests
from app.ui.services import Services
from app.ui.theme import current_colors, set_role
from app.ui.widgets.status_line import StatusLine

#: Seconds between two readings, and how much history the charts keep.
POLL_MS = 1000
HISTORY_S = 300
#: (key, title, series (attribute of Figures, legend, scale))
CHARTS = (
    ("requests", "Requests per second", (("requests_per_s", "answered", 1.0),
                                         ("errors_per_s", "errors", 1.0))),
    ("ttft", "Time to first token (ms)", (("ttft_p50", "median", 1000.0),
                                          ("ttft_p95", "95th percentile", 1000.0))),
    ("tokens", "Generated tokens per second", (("tokens_per_s", "tokens/s", 1.0),)),
    ("queue", "Requests now", (("in_progress", "in progress", 1.0),
                               ("waiting", "waiting for a model", 1.0))),
)  # fmt: skip
COLUMNS = ("Time", "Model", "Route", "Status", "Prompt tokens", "Completion tokens",
           "Latency (ms)", "Queued (ms)", "First token (ms)")  # fmt: skip
APP_HOST = "app"


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Relay(QObject):
    read = Signal(object, object, object, object)  # source, Reading|None, requests, error


class _Read(QRunnable):
    def __init__(self, relay: _Relay, source: str, url: str, key: str) -> None:
        super().__init__()
        self.relay, self.source, self.url, self.key = relay, source, url, key

    def run(self) -> None:
        try:
            reading: Reading | None = read_metrics(self.url, self.key)
            # llama-server (a Docker bundle) keeps no list of recent requests
            demoai = reading is not None and reading.engine == "demoai"
            rows = read_requests(self.url, self.key) if demoai else []
            error: ServingError | None = None
        except ServingError as exc:
            reading, rows, error = None, [], exc
        except Exception as exc:  # reported, never raised into the pool
            reading, rows, error = None, [], ServingError(str(exc))
        try:
            self.relay.read.emit(self.source, reading, rows, error)
        except RuntimeError:  # the pane was closed meanwhile
            pass


class AddServerDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Watch a model server")
        form = QFormLayout(self)
        self.url = QLineEdit()
        self.url.setPlaceholderText("http://127.0.0.1:8080")
        self.key = QLineEdit()
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("the server's API key")
        form.addRow("Address", self.url)
        form.addRow("API key", self.key)
        note = QLabel("A demoai serve instance or a deployed Docker bundle. The key is kept "
                      "only while this window is open.")  # fmt: skip
        note.setWordWrap(True)
        set_role(note, "muted")
        form.addRow(note)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)


class ServingPane(QWidget):
    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        #: source id -> (label, root url, key); the app's host is looked up at each read
        self.servers: dict[str, tuple[str, str, str]] = {}
        self.readings: dict[str, Reading] = {}
        self.history: collections.deque[tuple[float, Figures]] = collections.deque()
        self.last: Figures | None = None
        self._busy = False
        self._relay = _Relay()
        self._relay.read.connect(self._got)

        title = QLabel("Serving")
        set_role(title, "title")
        sub = QLabel("Live figures of a model server: this app's model host, a demoai serve "
                     "instance, or a deployed Docker bundle.")  # fmt: skip
        sub.setWordWrap(True)
        set_role(sub, "subtitle")
        self.source = QComboBox()
        self.source.setObjectName("servingSource")
        self.source.addItem("This app's model host", APP_HOST)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.add_btn = QPushButton("Watch a server…")
        self.add_btn.clicked.connect(self.add_server_dialog)
        top = QHBoxLayout()
        top.addWidget(QLabel("Server"))
        top.addWidget(self.source, 1)
        top.addWidget(self.add_btn)
        self.status = StatusLine()
        self.status.setObjectName("servingStatus")
        self.summary = QLabel("")
        self.summary.setObjectName("servingSummary")
        self.summary.setWordWrap(True)

        c = current_colors()
        grid = QGridLayout()
        self.plots: dict[str, Any] = {}
        self.curves: dict[str, Any] = {}
        palette = (c.accent, c.error, c.success, c.warning)
        for i, (key, label, series) in enumerate(CHARTS):
            w = pg.PlotWidget(title=label, background=c.base)
            w.setObjectName(f"servingPlot_{key}")
            w.getPlotItem().getAxis("left").setTextPen(c.text)
            w.getPlotItem().getAxis("bottom").setTextPen(c.text)
            w.getPlotItem().titleLabel.setText(label, color=c.text)
            w.showGrid(x=True, y=True, alpha=0.2)
            w.addLegend(offset=(5, 5), labelTextColor=c.text)
            w.setLabel("bottom", "seconds ago")
            w.getPlotItem().getAxis("bottom").enableAutoSIPrefix(False)
            w.getPlotItem().getAxis("left").enableAutoSIPrefix(False)
            w.setXRange(-HISTORY_S, 0, padding=0.02)
            w.getPlotItem().getViewBox().setMouseEnabled(x=False, y=False)
            w.getPlotItem().getViewBox().enableAutoRange(x=False, y=True)
            w.setMinimumHeight(170)
            w.setMaximumHeight(230)
            for j, (attr, legend, _scale) in enumerate(series):
                color = palette[j % len(palette)]
                self.curves[attr] = w.plot(
                    [], [], pen=pg.mkPen(color, width=2), name=legend,
                    symbol="o", symbolSize=4, symbolBrush=color, symbolPen=None,
                )  # fmt: skip
            self.plots[key] = w
            grid.addWidget(w, i // 2, i % 2)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("servingRequests")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(160)
        recent = QLabel("Recent requests (newest first; prompts are never kept)")
        set_role(recent, "subtitle")

        lay = QVBoxLayout(self)
        lay.addWidget(title)
        lay.addWidget(sub)
        lay.addLayout(top)
        lay.addWidget(self.status)
        lay.addWidget(self.summary)
        lay.addLayout(grid)
        lay.addWidget(recent)
        lay.addWidget(self.table, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        QTimer.singleShot(0, self.poll)

    # -- sources ----------------------------------------------------------------------
    def add_server_dialog(self) -> None:
        dlg = AddServerDialog(self)
        if dlg.exec() == QDialog.DialogCode.Accepted:
            self.add_server(dlg.url.text(), dlg.key.text())

    def add_server(self, url: str, key: str) -> bool:
        """Watch the server at ``url`` (its root, with or without /v1) with ``key``."""
        root = url.strip().rstrip("/").removesuffix("/v1")
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.status.error("Give the server's address, like http://127.0.0.1:8080.")
            return False
        if not is_loopback_url(root) and self.services.workspace.settings.offline:
            self.status.error(
                f"{parts.hostname} is on another machine, and the workspace is offline.",
                "Turn network on in Settings to watch a server elsewhere.",
            )
            return False
        sid = f"url:{root}"
        self.servers[sid] = (root, root, key.strip())
        if self.source.findData(sid) < 0:
            self.source.addItem(root, sid)
        self.source.setCurrentIndex(self.source.findData(sid))
        return True

    def _endpoint(self, sid: str) -> tuple[str, str] | None:
        if sid == APP_HOST:
            ep = self.services.host.endpoint()
            return (ep[0].removesuffix("/v1"), ep[1]) if ep else None
        _label, url, key = self.servers[sid]
        return url, key

    def _source_changed(self, _index: int) -> None:
        self.history.clear()
        self.last = None
        self.readings.clear()
        self.table.setRowCount(0)
        self._draw()
        self.poll()

    # -- reading ----------------------------------------------------------------------
    def poll(self) -> None:
        if self._busy or not self.isVisible():
            return
        sid = str(self.source.currentData())
        ep = self._endpoint(sid)
        if ep is None:
            self.status.ok(
                "The app's model host is not running: it starts when Chat, Agents or "
                "Evaluate first use a model.",
                clear_after_ms=0,
            )
            return
        self._busy = True
        QThreadPool.globalInstance().start(_Read(self._relay, sid, ep[0], ep[1]))

    def _got(self, sid: str, reading: Reading | None, rows: list[dict[str, Any]],
             error: ServingError | None) -> None:  # fmt: skip
        self._busy = False
        if sid != self.source.currentData():
            return
        if error is not None or reading is None:
            self.status.error(error or "No reading.", getattr(error, "hint", "") or "")
            return
        prev = self.readings.get(sid)
        self.readings[sid] = reading
        if prev is not None:
            f = figures(prev, reading)
            self.last = f
            self.history.append((reading.at, f))
            while self.history and reading.at - self.history[0][0] > HISTORY_S:
                self.history.popleft()
            self._draw()
            self._show_summary(f, reading)
        self.status.ok(f"Read {time.strftime('%H:%M:%S')}", clear_after_ms=0)
        self._fill_table(rows)

    # -- drawing ----------------------------------------------------------------------
    def _draw(self) -> None:
        now = self.history[-1][0] if self.history else 0.0
        xs = [at - now for at, _ in self.history]
        for _key, _label, series in CHARTS:
            for attr, _legend, scale in series:
                pts = [(x, getattr(f, attr)) for x, (_, f) in zip(xs, self.history, strict=True)]
                pts = [(x, v * scale) for x, v in pts if v is not None]
                self.curves[attr].setData([p[0] for p in pts], [p[1] for p in pts])

    def _show_summary(self, f: Figures, r: Reading) -> None:
        def ms(v: float | None) -> str:
            return "–" if v is None else f"{v * 1000:.0f} ms"

        models = ", ".join(f"{m} ({b / 2**20:.0f} MB)" for m, b in sorted(r.loaded.items()))
        if r.engine == "llama.cpp":
            self.summary.setText(
                f"llama.cpp server · {f.tokens_per_s:.1f} tokens/s · {f.in_progress:.0f} in "
                f"progress, {f.waiting:.0f} waiting · {int(r.completion_tokens)} tokens "
                "generated in all (llama-server exports no request counts, errors or "
                "first-token times, and keeps no list of requests)"
            )
            return
        self.summary.setText(
            f"{f.requests_per_s:.2f} requests/s · {f.errors_per_s:.2f} errors/s · "
            f"{f.tokens_per_s:.1f} tokens/s · first token {ms(f.ttft_p50)} median, "
            f"{ms(f.ttft_p95)} p95 · {f.in_progress:.0f} in progress, {f.waiting:.0f} "
            f"waiting · {int(r.requests)} requests in all · loaded: {models or 'nothing'}"
        )

    def _fill_table(self, rows: list[dict[str, Any]]) -> None:
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            values = (r.get("time"), r.get("model"), r.get("path"), r.get("status"),
                      r.get("prompt_tokens"), r.get("completion_tokens"), r.get("latency_ms"),
                      r.get("queue_ms"), r.get("ttft_ms"))  # fmt: skip
            if isinstance(values[0], str) and "T" in values[0]:  # the time of day is enough
                values = (values[0].split("T", 1)[1][:8], *values[1:])
            for j, v in enumerate(values):
                item = QTableWidgetItem("" if v is None else str(v))
                if isinstance(v, int | float):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(i, j, item)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.poll()
