"""What panes get: the workspace, core services, and the jobs hub (no global app handle)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from app.core.jobs.store import JobService
from app.core.workspace import Workspace
from app.ui.actions import ActionRunner
from app.ui.host_manager import HostManager
from app.ui.qt_changes import ChangeWatcher
from app.ui.qt_jobs_hub import JobsHub
from app.workers.supervisor import Supervisor


class UiBus(QObject):
    """Cross-pane requests, so panes never reach into each other or the window."""

    chat_with_model = Signal(str)  # model id
    models_changed = Signal()
    #: What changed in the workspace (by this window, the CLI or a job): a frozenset of
    #: topics ("models", "datasets", "versions", "runs", "prompts", "agents", "approvals",
    #: "conversations", "exports", "jobs"). See app/ui/qt_changes.py.
    changed = Signal(object)


@dataclass
class Services:
    workspace: Workspace
    jobs: JobService
    supervisor: Supervisor
    hub: JobsHub
    bus: UiBus = field(default_factory=UiBus)
    #: The one model host every pane shares (app/ui/host_manager.py).
    host: HostManager = field(init=False)

    #: The change broadcast (app/ui/qt_changes.py) and the action layer (app/ui/actions.py).
    changes: ChangeWatcher = field(init=False)
    actions: ActionRunner = field(init=False)

    def __post_init__(self) -> None:
        self.host = HostManager(self)
        self.changes = ChangeWatcher(self.workspace.db.path, self._announce)
        self.actions = ActionRunner(self.changes.poll)
        self.hub.jobs_changed.connect(lambda _jobs: self.bus.changed.emit(frozenset({"jobs"})))

    def _announce(self, topics: frozenset[str]) -> None:
        self.bus.changed.emit(topics)
        if "models" in topics:
            self.bus.models_changed.emit()

    @classmethod
    def create(cls, workspace: Workspace) -> Services:
        jobs = JobService(workspace)
        jobs.recover_stale()
        supervisor = Supervisor(workspace)
        return cls(workspace, jobs, supervisor, JobsHub(jobs, supervisor))
