"""What panes get: the workspace, core services, and the jobs hub (no global app handle)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.jobs.store import JobService
from app.core.workspace import Workspace
from app.ui.qt_jobs_hub import JobsHub
from app.workers.supervisor import Supervisor


@dataclass
class Services:
    workspace: Workspace
    jobs: JobService
    supervisor: Supervisor
    hub: JobsHub

    @classmethod
    def create(cls, workspace: Workspace) -> Services:
        jobs = JobService(workspace)
        jobs.recover_stale()
        supervisor = Supervisor(workspace)
        return cls(workspace, jobs, supervisor, JobsHub(jobs, supervisor))
