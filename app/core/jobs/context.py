"""What a job function receives: progress, metrics, logs, artifacts and cancellation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: Exit codes of a job process (anything else, or a signal, is a crash).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3


class Cancelled(Exception):
    """Raised by ``ctx.check_cancelled()``; the worker records the job as cancelled."""


class JobFailed(Exception):
    """A job's own, user-facing failure: message and what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class JobContext(Protocol):
    """Handed to every job function as its first argument."""

    job_id: str
    attempt: int
    run_dir: Path
    workspace: Workspace

    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report progress, 0..1 (None when unknown)."""

    def metric(self, name: str, step: int, value: float) -> None:
        """Record one point of a curve."""

    def log(self, text: str, level: str = "info") -> None:
        """A line for the job's log."""

    def artifact(self, kind: str, path: str | Path) -> None:
        """Announce a file or folder the job produced."""

    def result(self, data: dict[str, Any]) -> None:
        """The job's result (a JSON object), stored in the job row."""

    def cancelled(self) -> bool:
        """True once the user asked the job to stop."""

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the user asked the job to stop."""

    @property
    def checkpoint_dir(self) -> Path:
        """Where a resumable job keeps its checkpoints (survives resume)."""
