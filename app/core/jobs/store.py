"""The job table and the service that changes it.

States::

    queued -> running -> succeeded | failed | cancelled
                  \\-> cancelling -> cancelled | failed
    running (process gone, found at start-up) -> interrupted
    interrupted | cancelled | failed  --resume (resumable kinds)--> queued
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, NotFoundError
from app.core.jobs.registry import get_kind
from app.core.store.db import register_migrations
from app.core.store.files import atomic_write_json

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING})
LIVE_STATES = frozenset({JobState.RUNNING, JobState.CANCELLING})
FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
)
RESUMABLE_FROM = frozenset({JobState.INTERRUPTED, JobState.CANCELLED, JobState.FAILED})

register_migrations(
    "jobs",
    [
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            title TEXT NOT NULL,
            params TEXT NOT NULL,
            resource TEXT NOT NULL,
            state TEXT NOT NULL,
            progress REAL,
            message TEXT NOT NULL DEFAULT '',
            attempt INTEGER NOT NULL DEFAULT 1,
            pid INTEGER,
            pid_started REAL,
            exit_code INTEGER,
            error TEXT,
            hint TEXT,
            result TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX jobs_state ON jobs(state);
        CREATE INDEX jobs_created ON jobs(created_at)
        """
    ],
)


@dataclass
class Job:
    """One row of the job table."""

    id: str
    kind: str
    title: str
    params: dict[str, Any]
    resource: str
    state: JobState
    progress: float | None
    message: str
    attempt: int
    pid: int | None
    pid_started: float | None
    exit_code: int | None
    error: str | None
    hint: str | None
    result: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    run_dir: Path = field(default_factory=Path)

    @property
    def elapsed(self) -> float | None:
        """Seconds between start and finish (or now, while it runs)."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def resumable(self) -> bool:
        """True when this job can be resumed now."""
        if self.state not in RESUMABLE_FROM:
            return False
        try:
            return get_kind(self.kind).resumable
        except NotFoundError:
            return False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = {k: v for k, v in self.__dict__.items() if k != "run_dir"}
        d["state"] = str(self.state)
        d["elapsed"] = self.elapsed
        d["run_dir"] = str(self.run_dir)
        return d


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class JobService:
    """Creates, lists and changes jobs in a workspace. Used by the UI, the CLI and workers."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.db = workspace.db

    # -- reading ---------------------------------------------------------------
    def _row_to_job(self, r: dict[str, Any]) -> Job:
        return Job(
            id=r["id"],
            kind=r["kind"],
            title=r["title"],
            params=json.loads(r["params"]),
            resource=r["resource"],
            state=JobState(r["state"]),
            progress=r["progress"],
            message=r["message"],
            attempt=r["attempt"],
            pid=r["pid"],
            pid_started=r["pid_started"],
            exit_code=r["exit_code"],
            error=r["error"],
            hint=r["hint"],
            result=json.loads(r["result"]) if r["result"] else None,
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            updated_at=r["updated_at"],
            run_dir=self.ws.run_dir(r["id"]),
        )

    def get(self, job_id: str) -> Job:
        """The job with this id (or unique id prefix); NotFoundError otherwise."""
        row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None and job_id:
            rows = self.db.query(
                "SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\' LIMIT 2",
                (job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            )
            if len(rows) == 1:
                row = rows[0]
            elif len(rows) > 1:
                raise NotFoundError(
                    f"More than one job starts with '{job_id}'.", "Give more of the id."
                )
        if row is None:
            raise NotFoundError(
                f"No job with id '{job_id}' in this workspace.",
                "List jobs with 'demoai jobs list'.",
            )
        return self._row_to_job(row)

    def list_jobs(
        self, states: set[JobState] | frozenset[JobState] | None = None, limit: int = 500
    ) -> list[Job]:
        """Newest first."""
        if states:
            marks = ",".join("?" * len(states))
            rows = self.db.query(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?",
                (*[str(s) for s in states], limit),
            )
        else:
            rows = self.db.query("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        return [self._row_to_job(r) for r in rows]

    def changed_since(self, t: float) -> list[Job]:
        """Jobs whose row changed after time ``t`` (for cheap UI polling)."""
        rows = self.db.query("SELECT * FROM jobs WHERE updated_at > ?", (t,))
        return [self._row_to_job(r) for r in rows]

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        """The last lines of the job's log.txt (its process output)."""
        path = self.ws.run_dir(job_id) / "log.txt"
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except FileNotFoundError:
            return ""

    # -- changing ---------------------------------------------------------------
    def submit(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        title: str | None = None,
        resource: str | None = None,
    ) -> Job:
        """Record a queued job; a supervisor starts it."""
        k = get_kind(kind)
        params = dict(params or {})
        try:
            params_json = json.dumps(params, sort_keys=True)
        except TypeError as exc:
            raise ConfigError(f"Job parameters must be JSON values: {exc}") from exc
        job_id = _new_id()
        now = time.time()
        run_dir = self.ws.run_dir(job_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        atomic_write_json(run_dir / "config.json", {"kind": kind, "params": params})
        self.db.execute(
            "INSERT INTO jobs(id, kind, title, params, resource, state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                kind,
                title or k.title,
                params_json,
                resource or k.resource,
                str(JobState.QUEUED),
                now,
                now,
            ),
        )
        return self.get(job_id)

    def claim(self, job_id: str, *, gpu_slots: int = 1) -> bool:
        """Atomically move a queued job to running (before its process starts).

        Refuses a GPU job while another GPU job is live, so at most ``gpu_slots``
        run at once across every process that shares the workspace.
        """
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute("SELECT state, resource FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != JobState.QUEUED:
                return False
            if row["resource"] == "gpu":
                live = c.execute(
                    "SELECT COUNT(*) FROM jobs WHERE resource = 'gpu' AND state IN (?, ?)",
                    (str(JobState.RUNNING), str(JobState.CANCELLING)),
                ).fetchone()[0]
                if live >= gpu_slots:
                    return False
            c.execute(
                "UPDATE jobs SET state = ?, started_at = COALESCE(started_at, ?), finished_at = NULL,"
                " exit_code = NULL, error = NULL, hint = NULL, pid = NULL, updated_at = ? "
                "WHERE id = ?",
                (str(JobState.RUNNING), now, now, job_id),
            )
        return True

    def set_pid(self, job_id: str, pid: int, pid_started: float | None) -> None:
        self.db.execute(
            "UPDATE jobs SET pid = ?, pid_started = ?, updated_at = ? WHERE id = ?",
            (pid, pid_started, time.time(), job_id),
        )

    def set_progress(self, job_id: str, fraction: float | None, message: str) -> None:
        self.db.execute(
            "UPDATE jobs SET progress = ?, message = ?, updated_at = ? WHERE id = ?",
            (fraction, message, time.time(), job_id),
        )

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        hint: str | None = None,
        result: dict[str, Any] | None = None,
        only_if_live: bool = False,
    ) -> bool:
        """Record a final state. With ``only_if_live`` nothing changes unless the job is still live."""
        now = time.time()
        sql = (
            "UPDATE jobs SET state = ?, exit_code = COALESCE(?, exit_code), error = ?, hint = ?,"
            " result = COALESCE(?, result), finished_at = ?, updated_at = ?"
            + (", progress = 1.0" if state == JobState.SUCCEEDED else "")
            + " WHERE id = ?"
        )
        params: list[Any] = [
            str(state),
            exit_code,
            error,
            hint,
            json.dumps(result) if result is not None else None,
            now,
            now,
            job_id,
        ]
        if only_if_live:
            sql += " AND state IN (?, ?)"
            params += [str(JobState.RUNNING), str(JobState.CANCELLING)]
        return self.db.execute(sql, params) > 0

    def request_cancel(self, job_id: str) -> Job:
        """Ask a job to stop: a queued job is cancelled at once, a running one is told to stop.

        The request is a flag file that the worker polls (works on every OS); the
        supervisor escalates to terminate and kill if the worker does not stop.
        """
        job = self.get(job_id)
        now = time.time()
        if job.state == JobState.QUEUED:
            self.db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ? WHERE id = ? AND state = ?",
                (str(JobState.CANCELLED), now, now, job.id, str(JobState.QUEUED)),
            )
        elif job.state == JobState.RUNNING:
            (job.run_dir / "cancel.request").write_text(str(now))
            self.db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                (str(JobState.CANCELLING), now, job.id, str(JobState.RUNNING)),
            )
        elif job.state != JobState.CANCELLING:
            raise ConfigError(f"Job {job.id} is already {job.state}; there is nothing to cancel.")
        return self.get(job.id)

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, cancelled or failed job of a resumable kind again."""
        job = self.get(job_id)
        if job.state not in RESUMABLE_FROM:
            raise ConfigError(
                f"Job {job.id} is {job.state}; only interrupted, cancelled or failed jobs resume."
            )
        if not get_kind(job.kind).resumable:
            raise ConfigError(
                f"Jobs of kind '{job.kind}' cannot be resumed.", "Start a new job instead."
            )
        (job.run_dir / "cancel.request").unlink(missing_ok=True)
        now = time.time()
        self.db.execute(
            "UPDATE jobs SET state = ?, attempt = attempt + 1, exit_code = NULL, error = NULL, "
            "hint = NULL, finished_at = NULL, pid = NULL, updated_at = ? WHERE id = ?",
            (str(JobState.QUEUED), now, job.id),
        )
        return self.get(job.id)

    def recover_stale(self) -> list[str]:
        """Mark live jobs whose process is gone as interrupted (run at start-up)."""
        from app.core.system.procs import process_alive

        stale: list[str] = []
        for job in self.list_jobs(LIVE_STATES):
            if job.pid is not None and process_alive(job.pid, job.pid_started):
                continue
            if job.pid is None and job.started_at and time.time() - job.started_at < 30:
                continue  # claimed a moment ago; its process is starting
            if self.finish(
                job.id,
                JobState.INTERRUPTED,
                error="The job's process ended without reporting (the app or the machine stopped).",
                hint="Resume it if its kind supports resuming, or start it again.",
                only_if_live=True,
            ):
                stale.append(job.id)
        return stale
