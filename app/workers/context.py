"""The JobContext given to job functions inside a worker process."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from app.core.jobs.context import Cancelled
from app.core.jobs.events import EventWriter
from app.core.jobs.store import JobService
from app.core.workspace import Workspace


class WorkerContext:
    """Writes events to ``events.jsonl`` (mirrored on stdout) and progress to the job row."""

    DB_PROGRESS_INTERVAL = 0.5
    CANCEL_POLL_INTERVAL = 0.1

    def __init__(self, workspace: Workspace, job_id: str, attempt: int) -> None:
        self.workspace = workspace
        self.job_id = job_id
        self.attempt = attempt
        self.run_dir = workspace.run_dir(job_id)
        self.jobs = JobService(workspace)
        self.events = EventWriter(self.run_dir / "events.jsonl", mirror=sys.stdout)
        self._cancel_flag = self.run_dir / "cancel.request"
        self._last_db = 0.0
        self._last_cancel_poll = 0.0
        self._cancelled = False
        self._result: dict[str, Any] | None = None

    # -- JobContext -------------------------------------------------------------
    def progress(self, fraction: float | None, message: str = "") -> None:
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self.events.emit("progress", fraction=fraction, message=message)
        now = time.monotonic()
        if now - self._last_db >= self.DB_PROGRESS_INTERVAL or fraction == 1.0:
            self._last_db = now
            self.jobs.set_progress(self.job_id, fraction, message)

    def metric(self, name: str, step: int, value: float) -> None:
        self.events.emit("metric", name=name, step=int(step), value=float(value))

    def log(self, text: str, level: str = "info") -> None:
        self.events.emit("log", text=text, level=level)

    def artifact(self, kind: str, path: str | Path) -> None:
        self.events.emit("artifact", kind=kind, path=str(path))

    def result(self, data: dict[str, Any]) -> None:
        self._result = dict(data)
        self.events.emit("result", data=self._result)

    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_cancel_poll >= self.CANCEL_POLL_INTERVAL:
            self._last_cancel_poll = now
            self._cancelled = self._cancel_flag.exists()
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled()

    @property
    def checkpoint_dir(self) -> Path:
        path = self.run_dir / "checkpoints"
        path.mkdir(exist_ok=True)
        return path

    # -- worker side --------------------------------------------------------------
    @property
    def final_result(self) -> dict[str, Any] | None:
        return self._result

    def close(self) -> None:
        self.events.close()
