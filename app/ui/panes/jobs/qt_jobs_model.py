"""Table model over job rows, updated in place from the jobs hub."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from app.core.format import human_duration, relative_time
from app.core.jobs.store import Job, JobState

COLUMNS = ("Title", "Kind", "State", "Progress", "Elapsed", "Started", "Message")
COL_PROGRESS = COLUMNS.index("Progress")

_Index = QModelIndex | QPersistentModelIndex


class JobsTableModel(QAbstractTableModel):
    """Newest job first. ``Qt.UserRole`` on any cell gives the Job."""

    def __init__(self) -> None:
        super().__init__()
        self._jobs: list[Job] = []
        self._row: dict[str, int] = {}

    def set_jobs(self, jobs: list[Job]) -> None:
        self.beginResetModel()
        self._jobs = sorted(jobs, key=lambda j: j.created_at, reverse=True)
        self._row = {j.id: i for i, j in enumerate(self._jobs)}
        self.endResetModel()

    def update_jobs(self, jobs: list[Job]) -> None:
        """Replace changed rows; insert new jobs at the top."""
        new = [j for j in jobs if j.id not in self._row]
        for j in jobs:
            r = self._row.get(j.id)
            if r is not None:
                self._jobs[r] = j
                self.dataChanged.emit(self.index(r, 0), self.index(r, len(COLUMNS) - 1))
        if new:
            self.set_jobs(self._jobs + new)

    def set_live_progress(self, job_id: str, fraction: float | None, message: str) -> None:
        """Progress from the event stream (fresher than the row)."""
        r = self._row.get(job_id)
        if r is None:
            return
        job = self._jobs[r]
        job.progress = fraction
        job.message = message
        self.dataChanged.emit(self.index(r, COL_PROGRESS), self.index(r, len(COLUMNS) - 1))

    def refresh_elapsed(self) -> None:
        for r, j in enumerate(self._jobs):
            if j.state in (JobState.RUNNING, JobState.CANCELLING):
                i = self.index(r, COLUMNS.index("Elapsed"))
                self.dataChanged.emit(i, i)

    def job_at(self, row: int) -> Job | None:
        return self._jobs[row] if 0 <= row < len(self._jobs) else None

    def row_of(self, job_id: str) -> int | None:
        return self._row.get(job_id)

    # -- Qt ----------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = 0) -> Any:
        if not index.isValid():
            return None
        job = self._jobs[index.row()]
        col = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.UserRole:
            return job
        if role == Qt.ItemDataRole.DisplayRole:
            if col == "Title":
                return job.title
            if col == "Kind":
                return job.kind
            if col == "State":
                return str(job.state) + (f" (attempt {job.attempt})" if job.attempt > 1 else "")
            if col == "Progress":
                return None if job.progress is None else f"{job.progress * 100:.0f}%"
            if col == "Elapsed":
                return human_duration(job.elapsed)
            if col == "Started":
                return relative_time(job.started_at or job.created_at)
            if col == "Message":
                return (
                    (job.error or job.message or "").splitlines()[0]
                    if (job.error or job.message)
                    else ""
                )
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == "Started":
                return time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(job.started_at or job.created_at)
                )
            if col == "Message" and job.error:
                return job.error + (f"\n\n{job.hint}" if job.hint else "")
        if role == Qt.ItemDataRole.UserRole + 1 and col == "Progress":
            return job.progress
        return None
