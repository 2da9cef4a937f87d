"""The datasets of the workspace, newest first, with import, sample, export and delete.

The list follows ``services.bus.changed``: a dataset imported by the CLI or a
job appears without a click. Every write runs through ``services.actions`` or
as a job, its progress and errors in the status line under the buttons.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.data.store import DatasetRecord, DatasetStore
from app.core.errors import DemoAIError
from app.core.jobs.store import Job, JobState
from app.ui.services import Services
from app.ui.widgets.status_line import StatusLine

IMPORT_FILTER = "Data files (*.csv *.tsv *.json *.jsonl *.parquet *.txt);;All files (*)"
EXPORT_FILTER = "JSONL (*.jsonl);;CSV (*.csv);;Parquet (*.parquet)"


class DatasetList(QWidget):
    """``chosen(id)`` when the user picks a dataset (or an import of this window lands)."""

    chosen = Signal(str)

    def __init__(
        self,
        services: Services,
        store: DatasetStore,
        can_leave: Callable[[], bool],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.services = services
        self.store = store
        self.can_leave = can_leave
        self.records: list[DatasetRecord] = []
        self._jobs: set[str] = set()
        self.list = QListWidget()
        self.list.setObjectName("datasets")
        self.list.currentItemChanged.connect(self._picked)
        self._current: str | None = None
        self.import_btn = QPushButton("Import…")
        self.sample_btn = QPushButton("Add sample dataset")
        self.export_btn = QPushButton("Export…")
        self.delete_btn = QPushButton("Delete")
        self.import_btn.clicked.connect(lambda: self.import_file())
        self.sample_btn.clicked.connect(self.add_sample)
        self.export_btn.clicked.connect(lambda: self.export_current())
        self.delete_btn.clicked.connect(lambda: self.delete_current())
        self.status = StatusLine()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.import_btn)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.sample_btn)
        row = QHBoxLayout()
        row.addWidget(self.export_btn)
        row.addWidget(self.delete_btn)
        lay.addLayout(row)
        lay.addWidget(self.status)
        services.hub.jobs_changed.connect(self._jobs_changed)

    # -- the list ---------------------------------------------------------------------
    def refresh(self, select: str | None = None) -> list[DatasetRecord]:
        """Re-read the datasets, keeping (or moving to ``select``) the selection."""
        if select is not None:
            self._current = select
        self.records = self.store.list_datasets()
        self.list.blockSignals(True)
        self.list.clear()
        for d in self.records:
            rows = f"{d.rows:,} rows" if d.rows is not None else "empty"
            item = QListWidgetItem(f"{d.name}  ({rows})")
            item.setData(Qt.ItemDataRole.UserRole, d.id)
            item.setToolTip(", ".join(d.columns))
            self.list.addItem(item)
            if d.id == self._current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        if self.list.currentItem() is None:
            self._current = None
        self.sample_btn.setVisible(
            not any((d.source or "").startswith("sample:") for d in self.records)
        )
        has = self._current is not None
        self.export_btn.setEnabled(has)
        self.delete_btn.setEnabled(has)
        return self.records

    def current_id(self) -> str | None:
        return self._current

    def _picked(self, item: QListWidgetItem | None, previous: Any = None) -> None:
        if item is None:
            return
        ds = str(item.data(Qt.ItemDataRole.UserRole))
        if ds == self._current:
            return
        if not self.can_leave():  # unsaved edits kept: back to the dataset being edited
            self.list.blockSignals(True)
            self.list.setCurrentItem(previous)
            self.list.blockSignals(False)
            return
        self._current = ds
        self.export_btn.setEnabled(True)
        self.delete_btn.setEnabled(True)
        self.chosen.emit(ds)

    # -- actions ----------------------------------------------------------------------
    def import_file(self, path: str | None = None) -> Any:
        """Import as a background job (large files stream); the result is selected.

        The job is queued off the UI thread; the jobs hub starts it within its next tick."""
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Import data", "", IMPORT_FILTER)
        if not path:
            return None
        name = Path(path).name
        jobs, params = self.services.jobs, {"path": path}

        def queued(job: Job) -> None:
            self._jobs.add(job.id)
            self.status.busy(f"Importing {name}")
            self._jobs_changed([jobs.get(job.id)])  # in case it finished already

        return self.services.actions.run(
            self,
            f"Queueing the import of {name}",
            lambda _p: jobs.submit("data.import", params, title=f"Import {name}"),
            changes=("jobs",),
            done=queued,
            status=self.status,
        )

    def _jobs_changed(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.id not in self._jobs or job.state not in (
                JobState.SUCCEEDED,
                JobState.FAILED,
                JobState.CANCELLED,
            ):
                continue
            self._jobs.discard(job.id)
            if job.state == JobState.SUCCEEDED:
                ds = (job.result or {}).get("dataset_id")
                self.status.ok(f"{job.title}: done.")
                if ds and self.can_leave():
                    self.refresh(select=ds)
                    self.chosen.emit(ds)
            elif job.state == JobState.FAILED:
                self.status.error(DemoAIError(job.error or "The import failed.", job.hint))
            else:
                self.status.ok(f"{job.title}: cancelled.")

    def add_sample(self) -> Any:
        from app.core.data import ensure_sample_dataset

        ws = self.services.workspace

        def done(v: Any) -> None:
            if v is not None and self.can_leave():
                self.refresh(select=v.dataset_id)
                self.chosen.emit(v.dataset_id)

        return self.services.actions.run(
            self,
            "Adding the sample dataset",
            lambda _p: ensure_sample_dataset(ws),
            changes=("datasets", "versions"),
            done=done,
            status=self.status,
        )

    def export_current(self, path: str | None = None, fmt: str | None = None) -> Any:
        """Write the current version of the selected dataset to a file."""
        ds = self._current
        if ds is None:
            return None
        if not path:
            name = next((d.name for d in self.records if d.id == ds), "dataset")
            path, chosen = QFileDialog.getSaveFileName(self, "Export version", name, EXPORT_FILTER)
            if not path:
                return None
            fmt = "csv" if "CSV" in chosen else "parquet" if "Parquet" in chosen else "jsonl"
        fmt = fmt or Path(path).suffix.lstrip(".") or "jsonl"
        from app.core.data import export_version

        ws, out = self.services.workspace, path
        return self.services.actions.run(
            self,
            f"Exporting to {Path(out).name}",
            lambda _p: export_version(ws, ds, fmt, out, overwrite=True),
            status=self.status,
            ok_text=f"Exported to {out}.",
        )

    def delete_current(self, *, confirmed: bool = False) -> Any:
        ds = self._current
        if ds is None:
            return None
        name = next((d.name for d in self.records if d.id == ds), ds)
        if not confirmed and (
            QMessageBox.question(self, "Delete dataset", f"Delete '{name}' and all its versions?")
            != QMessageBox.StandardButton.Yes
        ):
            return None
        return self.services.actions.run(
            self,
            f"Deleting {name}",
            lambda _p: self.store.delete(ds),
            changes=("datasets", "versions"),
            status=self.status,
            ok_text=f"Deleted {name}.",
        )
