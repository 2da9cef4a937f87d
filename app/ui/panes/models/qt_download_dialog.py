"""Download a model from the Hugging Face Hub (only when the user turned network on)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError
from app.core.format import human_size
from app.core.jobs.store import Job
from app.core.models import hub
from app.ui.qt_errors import show_error
from app.ui.services import Services

OFFLINE_TEXT = (
    "Network is off: DemoAI makes no network calls. "
    "Turn network on in Settings to download from the Hugging Face Hub."
)
_PICKLE_EXTS = (".bin", ".pt", ".pth", ".ckpt")
_QUANT_RE = re.compile(
    r"(?:^|[-_.])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32|FP16|FP32)(?=\.gguf$|[-_.])",
    re.IGNORECASE,
)


def gguf_quant_label(path: str) -> str | None:
    """The quantization in a GGUF file name (``model-Q4_K_M.gguf`` -> ``Q4_K_M``), if any."""
    if not path.lower().endswith(".gguf"):
        return None
    name = path.rsplit("/", 1)[-1]
    found = _QUANT_RE.findall(name)
    return found[-1].upper() if found else None


class _Task(QObject, QRunnable):
    """Runs one Hub call off the UI thread and reports (result, error)."""

    done = Signal(object, object)

    def __init__(self, fn: Callable[[], Any]) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)
        self.fn = fn

    def run(self) -> None:
        try:
            result = self.fn()
        except DemoAIError as exc:
            self.done.emit(None, exc)
        except Exception as exc:  # reported in the dialog, never raised on a worker thread
            self.done.emit(None, DemoAIError(f"The Hub call failed: {exc}"))
        else:
            self.done.emit(result, None)


class DownloadDialog(QDialog):
    """Search the Hub, pick a repo and files, and start a ``models.pull`` job."""

    submitted = Signal(object)  # the Job

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Download from the Hugging Face Hub")
        self.resize(820, 520)
        self.services = services
        self.workspace = services.workspace
        self._tasks: list[_Task] = []
        self._commit: str | None = None
        self._repo: str | None = None

        # offline page
        offline = QWidget()
        self.offline_label = QLabel(OFFLINE_TEXT)
        self.offline_label.setObjectName("downloadOffline")
        self.offline_label.setWordWrap(True)
        self.settings_btn = QPushButton("Open Settings…")
        self.settings_btn.clicked.connect(self.open_settings)
        ol = QVBoxLayout(offline)
        ol.addStretch(1)
        ol.addWidget(self.offline_label)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.settings_btn)
        row.addStretch(1)
        ol.addLayout(row)
        ol.addStretch(1)

        # online page
        online = QWidget()
        self.query = QLineEdit()
        self.query.setPlaceholderText("Search models on the Hub, e.g. 'gemma gguf'")
        self.query.returnPressed.connect(self.search)
        self.search_btn = QPushButton("Search")
        self.search_btn.clicked.connect(self.search)
        self.results = QListWidget()
        self.results.currentItemChanged.connect(self._repo_selected)
        self.files = QListWidget()
        self.files.itemChanged.connect(lambda _: self._update_buttons())
        self.status = QLabel("Search for a model, pick a repo, then tick the files to download.")
        self.status.setObjectName("downloadStatus")
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.query, 1)
        top.addWidget(self.search_btn)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.results)
        split.addWidget(self.files)
        split.setSizes([320, 480])
        nl = QVBoxLayout(online)
        nl.setContentsMargins(0, 0, 0, 0)
        nl.addLayout(top)
        nl.addWidget(split, 1)
        nl.addWidget(self.status)

        self.pages = QStackedWidget()
        self.pages.addWidget(offline)
        self.pages.addWidget(online)
        buttons = QDialogButtonBox()
        self.download_btn = buttons.addButton("Download", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.download_btn.clicked.connect(self.start_download)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.pages, 1)
        lay.addWidget(buttons)
        self._update_mode()

    # -- mode ----------------------------------------------------------------------------
    @property
    def is_offline(self) -> bool:
        return bool(self.workspace.settings.offline)

    def _update_mode(self) -> None:
        self.pages.setCurrentIndex(0 if self.is_offline else 1)
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.download_btn.setVisible(not self.is_offline)
        self.download_btn.setEnabled(not self.is_offline and bool(self.chosen_files()))

    def open_settings(self) -> None:
        from app.ui.qt_settings_dialog import SettingsDialog

        SettingsDialog(self.workspace, self).exec()
        self._update_mode()

    # -- background calls ----------------------------------------------------------------
    def _run(self, fn: Callable[[], Any], done: Callable[[Any, Any], None]) -> None:
        task = _Task(fn)
        task.done.connect(done)
        self._tasks.append(task)
        QThreadPool.globalInstance().start(task)

    def search(self) -> None:
        text = self.query.text().strip()
        if self.is_offline or not text:
            return
        self.search_btn.setEnabled(False)
        self.status.setText(f"Searching the Hub for '{text}'…")
        ws = self.workspace
        self._run(lambda: hub.search(ws, text, limit=50), self._search_done)

    def _search_done(self, found: Any, error: Any) -> None:
        self.search_btn.setEnabled(True)
        if error is not None:
            self.status.setText(f"Search failed: {error}")
            show_error(self, "Search the Hub", error)
            return
        self.results.clear()
        self.files.clear()
        for m in found:
            tags = m.get("tags") or []
            extra = "  ·  GGUF" if "gguf" in tags else ""
            downloads = m.get("downloads")
            label = m["id"] + (f"  ·  {downloads:,} downloads" if downloads else "") + extra
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, m["id"])
            self.results.addItem(item)
        self.status.setText(
            f"{len(found)} model(s) found. Pick one to see its files."
            if found
            else "No models found on the Hub for this search."
        )

    def _repo_selected(self, item: QListWidgetItem | None, _prev: Any = None) -> None:
        if item is None:
            return
        repo_id = str(item.data(Qt.ItemDataRole.UserRole))
        self.select_repo(repo_id)

    def select_repo(self, repo_id: str) -> None:
        self._repo = repo_id
        self._commit = None
        self.files.clear()
        self._update_buttons()
        self.status.setText(f"Listing the files of {repo_id}…")
        ws = self.workspace
        self._run(
            lambda: (repo_id, *hub.list_repo_files(ws, repo_id)),
            self._files_done,
        )

    def _files_done(self, listing: Any, error: Any) -> None:
        if error is not None:
            self.status.setText(f"Could not list the files: {error}")
            show_error(self, "List files", error)
            return
        repo_id, commit, files = listing
        if repo_id != self._repo:
            return  # the user picked another repo meanwhile
        self._commit = commit
        self.files.blockSignals(True)
        self.files.clear()
        for f in sorted(files, key=lambda f: f.path):
            size = human_size(f.size) if f.size is not None else "size unknown"
            quant = gguf_quant_label(f.path)
            label = f"{f.path}  —  {size}"
            if f.path.lower().endswith(".gguf"):
                label += f"  —  GGUF {quant}" if quant else "  —  GGUF"
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, f.path)
            flags = item.flags() | Qt.ItemFlag.ItemIsUserCheckable
            if f.path.lower().endswith(_PICKLE_EXTS):
                flags &= ~Qt.ItemFlag.ItemIsEnabled
                item.setToolTip("Pickle weights are never downloaded: they can run code.")
            item.setFlags(flags)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.files.addItem(item)
        self.files.blockSignals(False)
        n_gguf = sum(1 for f in files if f.path.lower().endswith(".gguf"))
        self.status.setText(
            f"{repo_id}: {len(files)} file(s)"
            + (f", {n_gguf} GGUF quantization(s): tick one." if n_gguf else ": tick the files.")
        )
        self._update_buttons()

    # -- download ------------------------------------------------------------------------
    def chosen_files(self) -> list[str]:
        return [
            str(self.files.item(i).data(Qt.ItemDataRole.UserRole))
            for i in range(self.files.count())
            if self.files.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_checked(self, path: str, checked: bool = True) -> None:
        for i in range(self.files.count()):
            item = self.files.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == path:
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def start_download(self) -> Job | None:
        files = self.chosen_files()
        if self.is_offline or self._repo is None or not files:
            return None
        params = {"repo_id": self._repo, "files": files, "revision": self._commit}
        try:
            hub.validate_pull_params(self._repo, files, self._commit)
            job = self.services.jobs.submit("models.pull", params, title=f"Download {self._repo}")
        except DemoAIError as exc:
            show_error(self, "Download", exc)
            return None
        self.submitted.emit(job)
        self.accept()
        return job
