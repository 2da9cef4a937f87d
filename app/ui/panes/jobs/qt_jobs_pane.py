"""The Jobs pane."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError
from app.core.jobs.store import Job, JobState
from app.ui.panes.jobs.qt_jobs_model import COL_PROGRESS, JobsTableModel
from app.ui.qt_open import open_folder
from app.ui.services import Services


class ProgressDelegate(QStyledItemDelegate):
    """Draws the progress column as a progress bar."""

    def paint(
        self,
        painter: Any,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        value = index.data(Qt.ItemDataRole.UserRole + 1)
        job: Job | None = index.data(Qt.ItemDataRole.UserRole)
        if value is None and (job is None or job.state != JobState.RUNNING):
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 3, -2, -3)
        bar.minimum = 0
        bar.maximum = 0 if value is None else 1000  # busy indicator when unknown
        bar.progress = 0 if value is None else round(value * 1000)
        bar.text = "" if value is None else f"{value * 100:.0f}%"
        bar.textVisible = True
        bar.state = option.state
        QApplication.style().drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter)


class JobsPane(QWidget):
    """Every job: state, progress, elapsed, cancel, resume, log."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.model = JobsTableModel()
        self.model.set_jobs(services.jobs.list_jobs())

        self.table = QTableView()
        self.table.setObjectName("jobsTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setItemDelegateForColumn(COL_PROGRESS, ProgressDelegate(self.table))
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setColumnWidth(0, 220)
        self.table.setColumnWidth(COL_PROGRESS, 140)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self.cancel_btn = QPushButton("Cancel")
        self.resume_btn = QPushButton("Resume")
        self.log_btn = QPushButton("Open run folder")
        self.verify_btn = QPushButton("Verify workspace…")
        self.verify_btn.setToolTip(
            "Check the database and the sha256 of every stored file, as a background job"
        )
        self.cancel_btn.clicked.connect(self.cancel_selected)
        self.resume_btn.clicked.connect(self.resume_selected)
        self.log_btn.clicked.connect(self.open_run_folder)
        self.verify_btn.clicked.connect(self.start_verify)
        buttons = QHBoxLayout()
        for b in (self.cancel_btn, self.resume_btn, self.log_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.verify_btn)

        self.empty = QLabel(
            "No jobs yet. Training, evaluation, imports and exports run here in the "
            "background, so the window never freezes; you can cancel and resume them. "
            "Try 'Verify workspace…' to check every stored file."
        )
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)

        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.log_view = QPlainTextEdit()
        self.log_view.setObjectName("jobLog")
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("Select a job to see its log.")
        lower = QWidget()
        ll = QVBoxLayout(lower)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.details)
        ll.addWidget(self.log_view)

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        upper = QWidget()
        ul = QVBoxLayout(upper)
        ul.setContentsMargins(0, 0, 0, 0)
        ul.addLayout(buttons)
        ul.addWidget(self.empty)
        ul.addWidget(self.table)
        self.splitter.addWidget(upper)
        self.splitter.addWidget(lower)
        self.splitter.setSizes([400, 200])
        layout = QVBoxLayout(self)
        layout.addWidget(self.splitter)

        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)
        self._tick = QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self.model.refresh_elapsed)
        self._tick.start()
        self._update_empty()
        self._update_buttons()

    # -- selection ------------------------------------------------------------------
    def selected_job(self) -> Job | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.job_at(rows[0].row()) if rows else None

    def select_job(self, job_id: str) -> None:
        row = self.model.row_of(job_id)
        if row is not None:
            self.table.selectRow(row)

    def _selection_changed(self, *_: object) -> None:
        job = self.selected_job()
        self._update_buttons()
        if job is None:
            self.details.clear()
            self.log_view.clear()
            return
        self._show_details(job)
        self.log_view.setPlainText(self.services.jobs.log_tail(job.id, 400))
        self.log_view.moveCursor(self.log_view.textCursor().MoveOperation.End)

    def _show_details(self, job: Job) -> None:
        parts = [f"<b>{job.title}</b> — {job.kind} — {job.state}"]
        if job.error:
            parts.append(f"<span style='color:#c0392b'>{_esc(job.error.splitlines()[0])}</span>")
        if job.hint:
            parts.append(_esc(job.hint))
        if job.result:
            parts.append("Result: " + _esc(str(job.result))[:500])
        self.details.setText("<br>".join(parts))

    def _update_buttons(self) -> None:
        job = self.selected_job()
        self.cancel_btn.setEnabled(
            job is not None and job.state in (JobState.QUEUED, JobState.RUNNING)
        )
        self.resume_btn.setEnabled(job is not None and job.resumable)
        self.log_btn.setEnabled(job is not None)

    def _update_empty(self) -> None:
        has = self.model.rowCount() > 0
        self.empty.setVisible(not has)
        self.table.setVisible(has)

    # -- live updates -----------------------------------------------------------------
    def _jobs_changed(self, jobs: list[Job]) -> None:
        self.model.update_jobs(jobs)
        self._update_empty()
        sel = self.selected_job()
        if sel is not None and any(j.id == sel.id for j in jobs):
            self._show_details(sel)
            self._update_buttons()

    def _job_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        last = None
        for ev in events:
            if ev.get("type") == "progress":
                last = ev
        if last is not None:
            self.model.set_live_progress(job_id, last.get("fraction"), last.get("message", ""))
        sel = self.selected_job()
        if sel is not None and sel.id == job_id:
            lines = [
                _event_line(ev) for ev in events if ev.get("type") in ("log", "error", "state")
            ]
            if lines:
                self.log_view.appendPlainText("\n".join(lines))

    # -- actions -----------------------------------------------------------------------
    def _report(self, exc: DemoAIError) -> None:
        from app.ui.qt_errors import show_error

        show_error(self, "Jobs", exc)

    def cancel_selected(self) -> None:
        job = self.selected_job()
        if job is None:
            return
        try:
            self.services.supervisor.cancel(job.id)
        except DemoAIError as exc:
            self._report(exc)
        self.services.hub.tick()

    def resume_selected(self) -> None:
        job = self.selected_job()
        if job is None:
            return
        try:
            self.services.jobs.resume(job.id)
        except DemoAIError as exc:
            self._report(exc)
        self.services.hub.tick()

    def open_run_folder(self) -> None:
        job = self.selected_job()
        if job is not None:
            open_folder(self, job.run_dir)

    def start_verify(self) -> None:
        job = self.services.jobs.submit("workspace.verify", {})
        self._jobs_changed([job])  # listed at once, queued; the hub's round brings its state
        self.services.hub.tick()
        self.select_job(job.id)


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _event_line(ev: dict[str, Any]) -> str:
    t = ev.get("type")
    if t == "log":
        return str(ev.get("text", ""))
    if t == "error":
        return f"ERROR: {ev.get('message')}" + (f" — {ev.get('hint')}" if ev.get("hint") else "")
    return f"[{ev.get('state')}]"
