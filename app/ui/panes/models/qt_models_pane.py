"""The Models pane."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QSortFilterProxyModel, Qt, QThreadPool, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError
from app.core.format import human_size
from app.core.jobs.store import Job, JobState
from app.core.models.registry import ModelRecord, ModelRegistry
from app.ui.panes.models.qt_download_dialog import DownloadDialog
from app.ui.panes.models.qt_models_table import SORT_ROLE, ModelsTableModel, human_params
from app.ui.qt_errors import show_error
from app.ui.services import Services
from app.ui.widgets.status_line import StatusLine


class _DiscoverTask(QObject, QRunnable):
    """Scans the disk for models off the UI thread."""

    done = Signal(list, str)

    def __init__(self, registry: ModelRegistry, paths: list[str]) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)
        self.registry = registry
        self.paths = paths

    def run(self) -> None:
        from app.core.models.discover import discover

        try:
            self.done.emit(discover(self.registry, self.paths), "")
        except Exception as exc:  # reported in the dialog
            self.done.emit([], str(exc))


class DiscoverDialog(QDialog):
    """Models already on this machine (HF cache, LM Studio, Ollama, chosen folders)."""

    def __init__(self, registry: ModelRegistry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Discover models on this machine")
        self.resize(760, 460)
        self.registry = registry
        self.list = QListWidget()
        self.status = QLabel("Scanning the Hugging Face cache, LM Studio and Ollama folders…")
        self.status.setWordWrap(True)
        self.copy = QCheckBox("Copy into the workspace (otherwise reference the files in place)")
        add_folder = QPushButton("Scan a folder…")
        add_folder.clicked.connect(self._scan_folder)
        buttons = QDialogButtonBox()
        self.import_btn = buttons.addButton(
            "Import selected", QDialogButtonBox.ButtonRole.AcceptRole
        )
        buttons.addButton(QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.status)
        lay.addWidget(self.list, 1)
        row = QHBoxLayout()
        row.addWidget(add_folder)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.copy)
        lay.addWidget(buttons)
        self._tasks: list[_DiscoverTask] = []
        self.scan([])

    def scan(self, paths: list[str]) -> None:
        task = _DiscoverTask(self.registry, paths)
        task.done.connect(self._found)
        self._tasks.append(task)
        QThreadPool.globalInstance().start(task)

    def _scan_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder with GGUF files or model folders")
        if folder:
            self.status.setText(f"Scanning {folder}…")
            self.scan([folder])

    def _found(self, cands: list[Any], error: str) -> None:
        seen = {
            self.list.item(i).data(Qt.ItemDataRole.UserRole).path for i in range(self.list.count())
        }
        for c in cands:
            if c.path in seen:
                continue
            label = f"{c.name}  —  {c.format.upper()}, {human_size(c.size_bytes)}, {c.source}"
            item = QListWidgetItem(
                label + ("  (already in the library)" if c.already_registered else "")
            )
            item.setData(Qt.ItemDataRole.UserRole, c)
            item.setToolTip(c.path)
            flags = item.flags() | Qt.ItemFlag.ItemIsUserCheckable
            if c.already_registered:
                flags &= ~Qt.ItemFlag.ItemIsEnabled
            item.setFlags(flags)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.list.addItem(item)
        n = self.list.count()
        self.status.setText(
            f"Scan failed: {error}"
            if error
            else (
                f"Found {n} model(s). Tick the ones to import."
                if n
                else "No models found in the usual places. Use 'Scan a folder…' to look elsewhere."
            )
        )

    def chosen(self) -> list[Any]:
        return [
            self.list.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.list.count())
            if self.list.item(i).checkState() == Qt.CheckState.Checked
        ]


class ModelsPane(QWidget):
    """Table with filter/sort, details (metadata, files, lineage), actions."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.registry = ModelRegistry(services.workspace)
        self.model = ModelsTableModel()
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterKeyColumn(-1)

        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter models…")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.import_file_btn = QPushButton("Import GGUF…")
        self.import_dir_btn = QPushButton("Import folder…")
        self.discover_btn = QPushButton("Discover…")
        self.download_btn = QPushButton("Download…")
        self.download_btn.setToolTip(
            "Download a model from the Hugging Face Hub (needs network on)"
        )
        self.remove_btn = QPushButton("Remove…")
        self.chat_btn = QPushButton("Chat")
        self.inspect_btn = QPushButton("Inspect…")
        self.inspect_btn.setToolTip(
            "Architecture, weight statistics, LoRA updates and comparisons of the selected model"
        )
        self.inspect_btn.clicked.connect(self.inspect_selected)
        self.import_file_btn.clicked.connect(self.import_file)
        self.import_dir_btn.clicked.connect(self.import_folder)
        self.discover_btn.clicked.connect(self.discover)
        self.download_btn.clicked.connect(self.open_download_dialog)
        self.remove_btn.clicked.connect(self.remove_selected)
        self.chat_btn.clicked.connect(self.chat_selected)
        bar = QHBoxLayout()
        bar.addWidget(self.filter, 1)
        for b in (
            self.import_file_btn,
            self.import_dir_btn,
            self.discover_btn,
            self.download_btn,
            self.remove_btn,
            self.inspect_btn,
            self.chat_btn,
        ):
            bar.addWidget(b)

        self.table = QTableView()
        self.table.setObjectName("modelsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(8, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 220)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.table.doubleClicked.connect(lambda _: self.chat_selected())

        self.empty = QLabel(
            "<h3>Your model library is empty</h3>"
            "<p><b>Import GGUF…</b> adds a .gguf file (from LM Studio, Ollama or a download).<br>"
            "<b>Import folder…</b> adds a Hugging Face model folder (safetensors) or a LoRA adapter.<br>"
            "<b>Discover…</b> finds models already on this machine: the Hugging Face cache, "
            "LM Studio and Ollama.<br>"
            "<b>Download…</b> gets a model from the Hugging Face Hub once you turn network on.</p>"
            "<p>Nothing is downloaded unless you ask: DemoAI works offline.</p>"
        )
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.details = QTextBrowser()
        self.details.setObjectName("modelDetails")
        self.details.setPlaceholderText("Select a model to see its metadata, files and lineage.")

        self.status = QLabel("")
        self.status.setObjectName("modelsStatus")
        self.action_status = StatusLine()
        self.action_status.setObjectName("modelsActionStatus")
        upper = QWidget()
        ul = QVBoxLayout(upper)
        ul.setContentsMargins(0, 0, 0, 0)
        ul.addLayout(bar)
        ul.addWidget(self.status)
        ul.addWidget(self.action_status)
        ul.addWidget(self.empty)
        ul.addWidget(self.table)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(upper)
        self.splitter.addWidget(self.details)
        self.splitter.setSizes([420, 260])
        QVBoxLayout(self).addWidget(self.splitter)

        self._import_jobs: set[str] = set()
        services.hub.jobs_changed.connect(self._jobs_changed)
        # Models added or removed anywhere (a fine-tune, an export, the CLI) show at once.
        services.bus.changed.connect(self._workspace_changed)
        self.refresh()

    # -- data ----------------------------------------------------------------------------
    def _workspace_changed(self, topics: frozenset[str]) -> None:
        if "models" in topics:
            self.refresh()

    def refresh(self) -> None:
        selected = self.selected_model()
        self.model.set_models(self.registry.list())
        has = self.model.rowCount() > 0
        self.empty.setVisible(not has)
        self.table.setVisible(has)
        if selected is not None:
            self.select_model(selected.id)
        self._update_buttons()

    def selected_model(self) -> ModelRecord | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.model.model_at(self.proxy.mapToSource(rows[0]).row())

    def select_model(self, model_id: str) -> None:
        row = self.model.row_of(model_id)
        if row is not None:
            self.table.selectRow(self.proxy.mapFromSource(self.model.index(row, 0)).row())

    def _update_buttons(self) -> None:
        m = self.selected_model()
        self.remove_btn.setEnabled(m is not None)
        self.inspect_btn.setEnabled(m is not None)
        self.chat_btn.setEnabled(m is not None and m.format in ("gguf", "hf", "lora"))

    def _selection_changed(self, *_: object) -> None:
        self._update_buttons()
        m = self.selected_model()
        self.details.setHtml(self._details_html(m) if m else "")

    def _details_html(self, m: ModelRecord) -> str:
        e = html.escape
        rows = [
            ("Name", m.name),
            ("Id", m.id),
            ("Format", m.format),
            ("Architecture", m.architecture or "unknown"),
            (
                "Parameters",
                f"{human_params(m.parameters)} ({m.parameters:,})" if m.parameters else "unknown",
            ),
            ("Quantization", m.quantization or "-"),
            ("Context length", f"{m.context_length:,}" if m.context_length else "unknown"),
            (
                "Chat template",
                "yes" if m.has_chat_template else "no (a preset template is used in chat)",
            ),
            ("License", m.license or "not stated"),
            ("Size", human_size(m.size_bytes)),
            ("sha256", m.sha256),
            ("Location", f"{m.path}" + ("" if m.owned else " (referenced in place, not owned)")),
            ("Source", m.source_ref or m.source_kind),
        ]
        parts = ["<table cellspacing=4>"]
        parts += [f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in rows]
        parts.append("</table>")
        files = self.registry.files(m.id)
        if files:
            parts.append("<h4>Files</h4><table cellspacing=4>")
            for f in files[:200]:
                parts.append(
                    f"<tr><td>{e(f.relpath)}</td><td align=right>{human_size(f.size)}</td>"
                    f"<td><code>{f.sha256[:16]}…</code></td></tr>"
                )
            parts.append("</table>")
        lin = self.registry.lineage(m.id)
        if lin.parents or lin.children:
            parts.append("<h4>Lineage</h4><ul>")
            for edge in lin.parents:
                parts.append(
                    f"<li>{e(edge.relation)} <b>{e(edge.name or edge.model_id + ' (removed)')}</b></li>"
                )
            for edge in lin.children:
                parts.append(
                    f"<li><b>{e(edge.name or edge.model_id)}</b> is {e(edge.relation)} this model</li>"
                )
            parts.append("</ul>")
        return "".join(parts)

    # -- actions -------------------------------------------------------------------------
    def _ask_copy(self, what: str) -> bool | None:
        box = QMessageBox(self)
        box.setWindowTitle("Import model")
        box.setText(f"Copy {what} into the workspace, or reference it where it is?")
        box.setInformativeText(
            "A copy is safe if the original moves; a reference saves disk space. "
            "Removing a referenced model never deletes its files."
        )
        copy = box.addButton("Copy", QMessageBox.ButtonRole.AcceptRole)
        ref = box.addButton("Reference in place", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        return True if clicked is copy else False if clicked is ref else None

    def start_import(self, path: str, copy: bool, name: str | None = None) -> Job:
        """Import in a background job (copies and hashes can take minutes)."""
        job = self.services.jobs.submit(
            "models.import",
            {"path": path, "copy": copy, "name": name},
            title=f"Import {path.rsplit('/', 1)[-1]}",
        )
        self._import_jobs.add(job.id)
        self.services.hub.tick()
        return job

    def import_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import a GGUF file", "", "GGUF models (*.gguf);;All files (*)"
        )
        if path and (copy := self._ask_copy("this file")) is not None:
            self.start_import(path, copy)

    def import_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Import a Hugging Face model or adapter folder"
        )
        if path and (copy := self._ask_copy("this folder")) is not None:
            self.start_import(path, copy)

    def discover(self) -> None:
        dlg = DiscoverDialog(self.registry, self)
        if dlg.exec():
            for c in dlg.chosen():
                self.start_import(c.path, dlg.copy.isChecked(), c.name)

    def open_download_dialog(self) -> DownloadDialog:
        """Search the Hub and start a download job; the table refreshes when it succeeds."""
        dlg = DownloadDialog(self.services, self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.submitted.connect(self.track_job)
        dlg.open()
        return dlg

    def track_job(self, job: Job) -> None:
        """Refresh the library (or report the error) when this import/download job ends."""
        self._import_jobs.add(job.id)
        self.status.setText(f"{job.title or job.kind} started: see its progress in Jobs.")
        self.services.hub.tick()

    def remove_selected(self) -> None:
        m = self.selected_model()
        if m is None:
            return
        deps = self.registry.dependants(m.id)
        text = f"Remove '{m.name}' from the library?"
        info = (
            f"Its files in the workspace ({human_size(m.size_bytes)}) will be deleted."
            if m.owned
            else f"It is referenced in place: its files at {m.path} stay on disk."
        )
        if deps:
            names = ", ".join(self._name_of(d) for d in deps)
            info += (
                f"\n\nWarning: {len(deps)} model(s) derive from it ({names}). "
                "They stay, but lose this parent."
            )
        if (
            QMessageBox.question(self, "Remove model", f"{text}\n\n{info}")
            != QMessageBox.StandardButton.Yes
        ):
            return
        force = bool(deps)
        self.remove_btn.setEnabled(False)
        self.services.actions.run(
            self,
            f"Removing {m.name}",
            lambda _p: self.registry.remove(m.id, force=force),
            changes={"models"},
            status=self.action_status,
            done=lambda result: self.action_status.ok(
                f"Removed {m.name}: {human_size(result.bytes_freed)} freed."
            ),
            failed=lambda _exc: self._update_buttons(),
        )

    def _name_of(self, model_id: str) -> str:
        try:
            return self.registry.get(model_id).name
        except DemoAIError:
            return model_id

    def inspect_selected(self) -> Any:
        """Open the inspector of the selected model (a window of its own; None if none)."""
        m = self.selected_model()
        if m is None:
            return None
        from app.ui.panes.models.qt_inspect import InspectWindow

        win = InspectWindow(self.services, m, self)
        win.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        win.show()
        return win

    def chat_selected(self) -> None:
        m = self.selected_model()
        if m is not None:
            self.services.bus.chat_with_model.emit(m.id)

    def _jobs_changed(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.id not in self._import_jobs or job.state in (JobState.QUEUED, JobState.RUNNING):
                continue
            self._import_jobs.discard(job.id)
            if job.state == JobState.SUCCEEDED:
                self.refresh()
                if job.result and job.result.get("model_id"):
                    self.select_model(job.result["model_id"])
            elif job.state == JobState.FAILED:
                what = "Download" if job.kind == "models.pull" else "Import"
                show_error(
                    self,
                    f"{what} failed",
                    DemoAIError(job.error or f"The {what.lower()} failed.", job.hint),
                )
