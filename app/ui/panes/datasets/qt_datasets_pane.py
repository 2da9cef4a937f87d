"""The Datasets pane: layout and wiring of its widgets.

Left, the datasets (:mod:`.qt_dataset_list`); middle, the table editor
(:mod:`.qt_table_editor`) and the changes between two versions
(:mod:`.qt_diff_view`) as tabs; right, the versions (:mod:`.qt_versions_panel`).
The pane follows ``services.bus.changed``: a version written by a job, the CLI
or this window shows up without a click, unless it would throw away unsaved edits.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QLabel, QMessageBox, QSplitter, QTabWidget, QVBoxLayout, QWidget

from app.core.data.store import DatasetRecord, DatasetStore, VersionRecord
from app.core.errors import DemoAIError, NotFoundError
from app.core.jobs.store import Job, JobState
from app.ui.panes.datasets.qt_dataset_list import DatasetList
from app.ui.panes.datasets.qt_diff_view import DiffView
from app.ui.panes.datasets.qt_generate_dialog import GenerateDialog
from app.ui.panes.datasets.qt_prepare_dialog import PrepareDialog
from app.ui.panes.datasets.qt_table_editor import TableEditor
from app.ui.panes.datasets.qt_versions_panel import VersionsPanel
from app.ui.services import Services

__all__ = ["DatasetsPane", "GenerateDialog", "PrepareDialog"]

EMPTY_HTML = (
    "<h3>No datasets yet</h3><p><b>Import…</b> reads CSV, TSV, JSON, JSONL, Parquet, "
    "plain text, or a Hugging Face dataset folder (large files stream in the background).</p>"
    "<p>Or add the <b>sample instruction dataset</b> to try the editor, a fine-tune and an "
    "evaluation without your own data.</p>"
)


class DatasetsPane(QWidget):
    """Datasets on the left; the table editor and the diff; versions on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.store = DatasetStore(services.workspace)
        self.dataset: DatasetRecord | None = None
        self._jobs: set[str] = set()

        self.list = DatasetList(services, self.store, self._discard_ok)
        self.editor = TableEditor(services, self.store)
        self.diff_view = DiffView(services)
        self.versions_panel = VersionsPanel(services, self.store, self._discard_ok)
        self.empty = QLabel(EMPTY_HTML)
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("datasetTabs")
        self.tabs.addTab(self.editor, "Rows")
        self.tabs.addTab(self.diff_view, "Changes")
        mid = QWidget()
        ml = QVBoxLayout(mid)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addWidget(self.empty)
        ml.addWidget(self.tabs, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        for w in (self.list, mid, self.versions_panel):
            self.splitter.addWidget(w)
        self.splitter.setSizes([200, 760, 280])
        QVBoxLayout(self).addWidget(self.splitter)

        self.list.chosen.connect(self.open_dataset)
        self.editor.saved.connect(self._saved)
        self.editor.prepare_btn.clicked.connect(lambda: self.prepare())
        self.editor.generate_btn.clicked.connect(lambda: self.generate())
        self.versions_panel.compare_requested.connect(self.compare)
        QShortcut(QKeySequence.StandardKey.Undo, self).activated.connect(self.editor.undo)
        QShortcut(QKeySequence.StandardKey.Redo, self).activated.connect(self.editor.redo)
        QShortcut(QKeySequence.StandardKey.Save, self).activated.connect(self.editor.save_version)
        services.hub.jobs_changed.connect(self._jobs_changed)
        services.bus.changed.connect(self._workspace_changed)
        self.refresh_datasets()

    # -- what tests and other widgets reach -----------------------------------------------
    @property
    def version(self) -> VersionRecord | None:
        return self.editor.version

    @property
    def model(self) -> Any:
        return self.editor.model

    @property
    def table(self) -> Any:
        return self.editor.table

    @property
    def versions(self) -> Any:
        return self.versions_panel.list

    def ref(self) -> str:
        assert self.dataset is not None and self.version is not None
        return f"{self.dataset.id}@{self.version.hash}"

    def _discard_ok(self) -> bool:
        """True when there are no unsaved edits, or the user lets them go."""
        if not self.editor.has_changes:
            return True
        return (
            QMessageBox.question(
                self, "Unsaved changes", "Discard the unsaved edits of this dataset?"
            )
            == QMessageBox.StandardButton.Yes
        )

    # -- datasets and versions --------------------------------------------------------------
    def refresh_datasets(self, select: str | None = None) -> None:
        records = self.list.refresh(select=select)
        self.empty.setVisible(not records)
        self.tabs.setVisible(bool(records))
        current = self.list.current_id()
        if current is not None and (select is not None or self.dataset is None):
            self.open_dataset(current)
        elif current is None and records and self.dataset is None:
            self.list.list.setCurrentRow(0)  # emits chosen

    def open_dataset(self, ds_id: str, version: str | None = None) -> None:
        """Show ``ds_id`` at ``version`` (default: current): first rows at once."""
        self.dataset = self.store.get(ds_id)
        if self.list.current_id() != ds_id:
            self.list.refresh(select=ds_id)
        v = self.store.version(ds_id, version)
        self.editor.open(v)
        self.versions_panel.set_dataset(ds_id, v.hash)
        if self.diff_view.diff is not None and self.diff_view.diff.dataset_id != ds_id:
            self.diff_view.clear()
        self.empty.hide()
        self.tabs.show()

    @property
    def open_ms(self) -> float:
        return self.editor.open_ms

    def _close_dataset(self) -> None:
        self.dataset = None
        self.editor.open(None)
        self.versions_panel.set_dataset(None, None)
        self.diff_view.clear()

    def _saved(self, v: VersionRecord) -> None:
        if self.dataset is not None and v.dataset_id == self.dataset.id:
            self.open_dataset(v.dataset_id, v.hash)

    def _workspace_changed(self, topics: frozenset[str]) -> None:
        """Follow what the CLI, a job or an action changed; never drop unsaved edits."""
        if not topics & {"datasets", "versions"}:
            return
        records = self.list.refresh()
        self.empty.setVisible(not records)
        self.tabs.setVisible(bool(records))
        if self.dataset is None:
            if records:
                self.list.list.setCurrentRow(0)
            return
        try:
            ds = self.store.get(self.dataset.id)
        except NotFoundError:  # deleted (here or elsewhere)
            self._close_dataset()
            if records:
                self.list.list.setCurrentRow(0)
            return
        self.dataset = ds
        shown = self.version.hash if self.version else None
        if ds.current_version != shown and not self.editor.has_changes and not self.editor.saving:
            self.open_dataset(ds.id)
        else:
            self.versions_panel.refresh()

    # -- versions: compare --------------------------------------------------------------------
    def compare(self, old: str, new: str) -> Any:
        if self.dataset is None:
            return None
        self.tabs.setCurrentWidget(self.diff_view)
        return self.diff_view.compare(self.dataset.id, old, new)

    # -- thin forwards kept for callers ---------------------------------------------------------
    def save_version(self, message: str | None = None) -> Any:
        return self.editor.save_version(message)

    def import_file(self, path: str | None = None) -> Any:
        return self.list.import_file(path)

    def add_sample(self) -> Any:
        return self.list.add_sample()

    # -- jobs: prepare and generate -------------------------------------------------------------
    def prepare(self, step: dict[str, Any] | None = None) -> Job | None:
        """Apply a preparation step as a background job; the result is a new version."""
        if self.dataset is None or self.version is None:
            return None
        if not isinstance(step, dict):
            dlg = PrepareDialog(self)
            if not dlg.exec():
                return None
            step = dlg.chosen
        from app.core.data.recipes import step_label

        job = self.services.jobs.submit(
            "data.apply",
            {"dataset": self.ref(), "steps": [step]},
            title=f"Prepare {self.dataset.name}: {step_label(0, 1, step['name'])}",
        )
        return self._started(job)

    def generate(self, spec: tuple[str, dict[str, Any]] | None = None) -> Job | None:
        """Self-instruct or augmentation as a background job; the result is a new version."""
        if self.dataset is None or self.version is None:
            return None
        if not isinstance(spec, tuple):
            dlg = GenerateDialog(self)
            if not dlg.exec():
                return None
            spec = dlg.chosen
        kind, params = spec
        what = "self-instruct" if kind == "data.self_instruct" else "augment"
        job = self.services.jobs.submit(kind, params, title=f"Generate {self.dataset.name}: {what}")
        return self._started(job)

    def _started(self, job: Job) -> Job:
        self._jobs.add(job.id)
        self.editor.status.busy(f"{job.title} (in Jobs)")  # the hub starts it on its next tick
        return job

    def _jobs_changed(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.id not in self._jobs or job.state in (
                JobState.QUEUED,
                JobState.RUNNING,
                JobState.CANCELLING,
            ):
                continue
            self._jobs.discard(job.id)
            if job.state == JobState.SUCCEEDED:
                self.editor.status.ok(f"{job.title}: a new version.")
                result = job.result or {}
                ds = result.get("dataset_id") or (result.get("dataset") or {}).get("id")
                if ds and (self.dataset is None or ds != self.dataset.id) and self._discard_ok():
                    self.open_dataset(ds)
                elif ds and not self.editor.has_changes:
                    self.open_dataset(ds)
            elif job.state == JobState.FAILED:
                self.editor.status.error(DemoAIError(job.error or "The job failed.", job.hint))
            else:
                self.editor.status.ok(f"{job.title}: cancelled.")
