"""The main window: a sidebar of panes, a status bar with hardware and running jobs."""

from __future__ import annotations

import base64
import importlib
import json
from typing import Any

from PySide6.QtCore import (
    QByteArray,
    QEventLoop,
    QObject,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    Signal,
)
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QWidget,
)

from app.core.jobs.store import Job, JobState
from app.core.store.files import atomic_write_json
from app.ui.panes import PANES, PaneSpec
from app.ui.qt_host_status import HostStatusButton
from app.ui.services import Services
from app.ui.theme import ThemeManager, after_first_paint, icon, when_icons_ready
from app.ui.warmup import PaneWarmup

UI_STATE_FILE = "ui-state.json"


class _HardwareProbe(QObject, QRunnable):
    """Finds hardware off the UI thread (nvidia-smi can take a moment)."""

    found = Signal(str, str)

    def __init__(self) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)

    def run(self) -> None:
        from app.core.system.hardware import detect_hardware

        hw = detect_hardware()
        self.found.emit(hw.summary(), hw.gpu_note)


def fit_to_screen(window: QWidget) -> None:
    """Shrink and move ``window`` so that it, frame included, lies on the available part of
    its screen (a size saved on a larger monitor must not open off a laptop screen)."""
    if window.isMaximized() or window.isFullScreen():
        return
    geo, frame = window.geometry(), window.frameGeometry()
    screen = QGuiApplication.screenAt(geo.center()) or window.screen()
    screen = screen or QGuiApplication.primaryScreen()
    if screen is None:
        return
    avail = screen.availableGeometry()
    dw, dh = frame.width() - geo.width(), frame.height() - geo.height()
    w = max(1, min(geo.width(), avail.width() - dw))
    h = max(1, min(geo.height(), avail.height() - dh))
    if (w, h) != (geo.width(), geo.height()):
        window.resize(w, h)
    fw, fh = w + dw, h + dh
    x = min(max(frame.x(), avail.left()), avail.left() + avail.width() - fw)
    y = min(max(frame.y(), avail.top()), avail.top() + avail.height() - fh)
    if (x, y) != (frame.x(), frame.y()):
        window.move(x, y)


class MainWindow(QMainWindow):
    """Hosts the panes; builds each one the first time it is shown."""

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        from app.ui.qt_app_state import remembered_theme

        app = QApplication.instance()
        assert isinstance(app, QApplication)
        self.theme = ThemeManager.for_app(app, remembered_theme())
        self._icons: list[tuple[Any, str]] = []  # (item or action, icon name), set after show
        self._icons_loaded = False
        self.setWindowTitle(f"DemoAI — {services.workspace.root}")
        self.resize(1200, 780)
        self._panes: dict[str, QWidget] = {}
        self._specs: list[PaneSpec] = list(PANES)

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setMaximumWidth(220)
        self.sidebar.setMinimumWidth(150)
        self.sidebar.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.sidebar.setIconSize(QSize(18, 18))
        for spec in self._specs:
            item = QListWidgetItem(spec.name)
            item.setToolTip(spec.tooltip)
            self.sidebar.addItem(item)
            if spec.icon:
                self._icons.append((item, spec.icon))
        self.stack = QStackedWidget()
        for _ in self._specs:
            self.stack.addWidget(QWidget())  # replaced by the real pane on first show
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(self.stack)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([190, 1010])
        self.setCentralWidget(self.splitter)
        self.sidebar.currentRowChanged.connect(self.show_pane_at)

        self.hw_label = QLabel("Detecting hardware…")
        self.jobs_label = QLabel("")
        self.net_label = QLabel("")
        sb = self.statusBar()
        sb.addWidget(self.hw_label, 1)
        sb.addPermanentWidget(self.net_label)
        sb.addPermanentWidget(self.jobs_label)
        self.host_status = HostStatusButton(services)  # what the shared model host holds
        sb.addPermanentWidget(self.host_status)
        from app.ui.qt_backup_reminder import BackupReminder

        self.backup_reminder = BackupReminder(services.workspace, self.open_settings)
        sb.addPermanentWidget(self.backup_reminder)
        self._update_network_label()
        services.hub.jobs_changed.connect(self._update_jobs_label)
        services.bus.chat_with_model.connect(self._chat_with)

        self._build_menu()
        self.theme.changed.connect(self._scheme_changed)
        self._fitted = False
        self._restore_state()
        fit_to_screen(self)
        self._probe = _HardwareProbe()
        self._probe.found.connect(self._hardware_found)
        QThreadPool.globalInstance().start(self._probe)
        services.hub.start()
        services.changes.start()
        #: Set once every pane's module is imported (see app/ui/warmup.py).
        self._warmup = PaneWarmup([spec.widget.partition(":")[0] for spec in self._specs], self)
        self.panes_ready = self._warmup.done
        self._update_jobs_label([])

    # -- panes ----------------------------------------------------------------------
    def pane(self, key: str) -> QWidget:
        """The pane ``key``, built if needed, and shown."""
        for i, spec in enumerate(self._specs):
            if spec.key == key:
                self.sidebar.setCurrentRow(i)
                return self._panes[key]
        raise KeyError(key)

    def show_pane_at(self, row: int) -> None:
        if not 0 <= row < len(self._specs):
            return
        spec = self._specs[row]
        if spec.key not in self._panes:
            module, _, cls = spec.widget.partition(":")
            widget = getattr(importlib.import_module(module), cls)(self.services, self)
            old = self.stack.widget(row)
            if old is not None:
                self.stack.removeWidget(old)
                old.deleteLater()
            # A pane wider or taller than the window scrolls; without this holder the stack
            # took the largest pane's minimum size and the window widened itself past the
            # screen (1,529 px on opening Datasets) and kept that size.
            holder = QScrollArea()
            holder.setObjectName(f"paneHolder_{spec.key}")
            holder.setFrameShape(QFrame.Shape.NoFrame)
            holder.setWidgetResizable(True)
            holder.setWidget(widget)
            self.stack.insertWidget(row, holder)
            self._panes[spec.key] = widget
            opener = getattr(widget, "open_pane", None)  # Home's steps go to their panes
            if opener is not None:
                opener.connect(self.pane)
        self.stack.setCurrentIndex(row)

    def _chat_with(self, model_id: str) -> None:
        chat = self.pane("chat")
        chat.chat_with(model_id)  # type: ignore[attr-defined]

    # -- menu ----------------------------------------------------------------------------
    def _action(self, text: str, slot: Any, shortcut: Any = None, icon_name: str = "") -> QAction:
        act = QAction(text, self)
        if isinstance(shortcut, tuple):  # (standard key, fallback where the platform has none)
            standard, fallback = shortcut
            keys = QKeySequence.keyBindings(standard) or [QKeySequence(fallback)]
            act.setShortcuts(keys)
        elif shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(slot)
        if icon_name:
            self._icons.append((act, icon_name))
        return act

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(
            self._action(
                "&Settings…",
                self.open_settings,
                (QKeySequence.StandardKey.Preferences, "Ctrl+,"),
                "mdi6.cog-outline",
            )
        )
        file_menu.addSeparator()
        file_menu.addAction(
            self._action(
                "&Quit", self.close, (QKeySequence.StandardKey.Quit, "Ctrl+Q"), "mdi6.exit-to-app"
            )
        )
        go_menu = self.menuBar().addMenu("&Go")
        for i, spec in enumerate(self._specs):
            act = self._action(
                spec.name.replace("&", "&&"),
                lambda _=False, r=i: self.sidebar.setCurrentRow(r),
                f"Ctrl+{i + 1}" if i < 9 else None,
                spec.icon,
            )
            go_menu.addAction(act)
        help_menu = self.menuBar().addMenu("&Help")
        self.docs_action = self._action(
            "&Documentation",
            self.open_documentation,
            (QKeySequence.StandardKey.HelpContents, "F1"),
            "mdi6.book-open-variant",
        )
        self.shortcuts_action = self._action(
            "&Keyboard shortcuts", self.show_shortcuts, "Ctrl+/", "mdi6.keyboard-outline"
        )
        self.about_action = self._action(
            "&About DemoAI", self.show_about, None, "mdi6.information-outline"
        )
        for act in (self.docs_action, self.shortcuts_action):
            help_menu.addAction(act)
        help_menu.addSeparator()
        help_menu.addAction(self.about_action)

    def open_settings(self) -> None:
        from app.ui.qt_settings_dialog import SettingsDialog

        dlg = SettingsDialog(
            self.services.workspace, self, theme=self.theme, actions=self.services.actions
        )
        if dlg.exec():
            self._update_network_label()
        self.backup_reminder.refresh()

    # -- help ------------------------------------------------------------------------------
    def open_documentation(self) -> None:
        from app.ui.qt_help import open_documentation

        open_documentation(self)

    def show_shortcuts(self) -> None:
        from app.ui.qt_help import ShortcutsDialog

        ShortcutsDialog(self).exec()

    def show_about(self) -> None:
        from app.ui.qt_help import AboutDialog

        AboutDialog(self.services.workspace.root, self).exec()

    # -- look --------------------------------------------------------------------------------
    def load_icons(self) -> None:
        """Set the sidebar and menu icons, tinted for the current scheme. Called once the
        window has been painted and qtawesome imported (in slices), and again on
        a theme change."""
        self._icons_loaded = True
        for target, name in self._icons:
            target.setIcon(icon(name))

    def _scheme_changed(self, _scheme: str) -> None:
        if self._icons_loaded:
            self.load_icons()

    # -- status bar ------------------------------------------------------------------------
    def _hardware_found(self, summary: str, note: str) -> None:
        self.hw_label.setText(summary)
        self.hw_label.setToolTip(note or summary)

    def _update_network_label(self) -> None:
        off = self.services.workspace.settings.offline
        self.net_label.setText("Offline" if off else "Network on")
        self.net_label.setToolTip(
            "No network calls are made. Turn network on in Settings to download models."
            if off
            else "Downloads from the Hugging Face Hub are allowed."
        )

    def _update_jobs_label(self, _: list[Job]) -> None:
        live = self.services.jobs.list_jobs(
            {JobState.RUNNING, JobState.CANCELLING, JobState.QUEUED}
        )
        running = sum(1 for j in live if j.state != JobState.QUEUED)
        queued = len(live) - running
        text = f"{running} job{'s' if running != 1 else ''} running"
        if queued:
            text += f", {queued} queued"
        self.jobs_label.setText(text)

    # -- window state -----------------------------------------------------------------------
    def _state_path(self) -> Any:
        return self.services.workspace.root / UI_STATE_FILE

    def _restore_state(self) -> None:
        row = 0
        try:
            state = json.loads(self._state_path().read_text())
            if g := state.get("geometry"):
                self.restoreGeometry(QByteArray(base64.b64decode(g)))
            if s := state.get("window_state"):
                self.restoreState(QByteArray(base64.b64decode(s)))
            if sizes := state.get("splitter"):
                self.splitter.setSizes([int(x) for x in sizes])
            keys = [s.key for s in self._specs]
            if state.get("pane") in keys:
                row = keys.index(state["pane"])
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # no or unreadable state: defaults
        self.sidebar.setCurrentRow(row)

    def save_state(self) -> None:
        row = self.sidebar.currentRow()
        state = {
            "geometry": base64.b64encode(bytes(self.saveGeometry().data())).decode(),
            "window_state": base64.b64encode(bytes(self.saveState().data())).decode(),
            "splitter": self.splitter.sizes(),
            "pane": self._specs[row].key if 0 <= row < len(self._specs) else None,
        }
        try:
            atomic_write_json(self._state_path(), state)
        except OSError:
            pass  # a read-only workspace must not stop the window from closing

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._fitted:  # the frame is known once shown: fit once more, frame included
            self._fitted = True
            fit_to_screen(self)
            after_first_paint(self, lambda: when_icons_ready(self.load_icons, self))
            # the panes' warm-up after the icons': one import at a time is quickest for both
            after_first_paint(self, lambda: when_icons_ready(self._warmup.start, self))

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_state()
        # The window goes at once; stopping streams, runs and the model host (up to a few
        # seconds) happens after it is gone, not in a frozen window (issue 14: 3.1 s).
        self.hide()
        QGuiApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
        self.services.hub.stop()
        self.services.changes.stop()
        for pane in self._panes.values():
            closer = getattr(pane, "shutdown", None)
            if callable(closer):
                closer()
        self.services.actions.wait_all(30_000)
        self.services.host.stop()
        super().closeEvent(event)
