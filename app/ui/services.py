"""What panes get: the workspace, core services, and the jobs hub (no global app handle)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from app.core.jobs.store import JobService
from app.core.workspace import Workspace
from app.ui.qt_jobs_hub import JobsHub
from app.workers.supervisor import Supervisor


class UiBus(QObject):
    """Cross-pane requests, so panes never reach into each other or the window."""

    chat_with_model = Signal(str)  # model id
    models_changed = Signal()


@dataclass
class Services:
    workspace: Workspace
    jobs: JobService
    supervisor: Supervisor
    hub: JobsHub
    bus: UiBus = field(default_factory=UiBus)

    @classmethod
    def create(cls, workspace: Workspace) -> Services:
        jobs = JobService(workspace)
        jobs.recover_stale()
        supervisor = Supervisor(workspace)
        return cls(workspace, jobs, supervisor, JobsHub(jobs, supervisor))
