"""Starts job processes, watches their exit codes, escalates cancellation.

One GPU job runs at a time (checked in the database, so it holds across the
app and the CLI); CPU jobs run beside it up to ``max_cpu_jobs``. Cancel is
cooperative first (a flag file the job polls), then terminate, then kill; all
three work on Windows too. Call :meth:`Supervisor.pump` periodically (the UI
does from a timer thread, the CLI while it waits): it never blocks. Its methods
are safe to call from several threads (one lock: the window pumps on a thread of
its own while a pane cancels from the UI thread).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

import psutil

from app.core.jobs.context import EXIT_CANCELLED, EXIT_OK
from app.core.jobs.store import Job, JobService, JobState
from app.core.workspace import Workspace

#: Seconds a job may take to stop by itself after a cancel before terminate, then kill.
CANCEL_GRACE_S = 10.0
TERMINATE_GRACE_S = 5.0


@dataclass
class _Child:
    job_id: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


class Supervisor:
    """Runs the queued jobs of one workspace as child processes."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        max_cpu_jobs: int | None = None,
        cancel_grace_s: float = CANCEL_GRACE_S,
        terminate_grace_s: float = TERMINATE_GRACE_S,
    ) -> None:
        self.ws = workspace
        self.jobs = JobService(workspace)
        self.max_cpu_jobs = max_cpu_jobs or workspace.settings.max_cpu_jobs
        self.cancel_grace_s = cancel_grace_s
        self.terminate_grace_s = terminate_grace_s
        self._children: dict[str, _Child] = {}
        self._cancel_at: dict[str, float] = {}
        self._lock = threading.RLock()

    # -- starting ---------------------------------------------------------------
    def start(self, job_id: str, *, detach: bool = False) -> bool:
        """Claim a queued job and start its process now; False if it cannot start now."""
        with self._lock:
            return self._start(job_id, detach=detach)

    def _start(self, job_id: str, *, detach: bool) -> bool:
        if not self.jobs.claim(job_id):
            return False
        job = self.jobs.get(job_id)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(job.run_dir / "log.txt", "ab")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, object] = {}
        if os.name == "nt":
            flags = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            if detach:
                flags |= subprocess.DETACHED_PROCESS  # type: ignore[attr-defined]
            kwargs["creationflags"] = flags
        else:
            # Own session: a Ctrl+C in the terminal does not kill jobs behind the user's back.
            kwargs["start_new_session"] = True
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "app.workers.run", job.id, "--workspace", str(self.ws.root)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(job.run_dir),
                **kwargs,  # type: ignore[call-overload]
            )
        except OSError as exc:
            log.close()
            self.jobs.finish(
                job.id,
                JobState.FAILED,
                error=f"Could not start the job's process: {exc}",
                hint="Check that the Python environment is intact (./dev.sh run reinstalls it).",
            )
            return False
        try:
            started = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            started = None
        self.jobs.set_pid(job.id, popen.pid, started)
        if detach:
            log.close()
        else:
            self._children[job.id] = _Child(job.id, popen, log)
        return True

    def _start_queued(self) -> list[str]:
        started: list[str] = []
        live = self.jobs.list_jobs({JobState.RUNNING, JobState.CANCELLING})
        cpu_live = sum(1 for j in live if j.resource != "gpu")
        gpu_live = sum(1 for j in live if j.resource == "gpu")
        for job in reversed(self.jobs.list_jobs({JobState.QUEUED})):  # oldest first
            if job.resource == "gpu":
                if gpu_live >= 1:
                    continue
            elif cpu_live >= self.max_cpu_jobs:
                continue
            if self.start(job.id):
                started.append(job.id)
                if job.resource == "gpu":
                    gpu_live += 1
                else:
                    cpu_live += 1
        return started

    # -- watching -----------------------------------------------------------------
    def _reap(self) -> list[str]:
        done: list[str] = []
        for job_id, child in list(self._children.items()):
            code = child.popen.poll()
            if code is None:
                continue
            child.log.close()
            del self._children[job_id]
            self._cancel_at.pop(job_id, None)
            done.append(job_id)
            job = self.jobs.get(job_id)
            if job.state not in (JobState.RUNNING, JobState.CANCELLING):
                continue  # the child recorded its own end
            if code == EXIT_OK:
                self.jobs.finish(job_id, JobState.SUCCEEDED, exit_code=code, only_if_live=True)
            elif code == EXIT_CANCELLED or job.state == JobState.CANCELLING:
                self.jobs.finish(job_id, JobState.CANCELLED, exit_code=code, only_if_live=True)
            else:
                tail = self.jobs.log_tail(job_id, 20).strip()
                self.jobs.finish(
                    job_id,
                    JobState.FAILED,
                    exit_code=code,
                    error=f"The job's process {_describe_exit(code)}."
                    + (f"\n--- last lines of its log ---\n{tail}" if tail else ""),
                    hint="Open the log for details; resume or restart the job.",
                    only_if_live=True,
                )
        return done

    def _escalate_cancels(self) -> None:
        now = time.monotonic()
        for job in self.jobs.list_jobs({JobState.CANCELLING}):
            first = self._cancel_at.setdefault(job.id, now)
            waited = now - first
            if waited < self.cancel_grace_s or job.pid is None:
                continue
            try:
                proc = psutil.Process(job.pid)
                if job.pid_started is not None and abs(proc.create_time() - job.pid_started) > 1:
                    continue
                if waited < self.cancel_grace_s + self.terminate_grace_s:
                    proc.terminate()
                else:
                    proc.kill()
            except psutil.Error:
                continue

    def pump(self) -> list[str]:
        """Reap finished children, escalate cancels, start queued jobs. Returns changed job ids."""
        with self._lock:
            changed = self._reap()
            self._escalate_cancels()
            changed += self._start_queued()
            return changed

    # -- control --------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop (escalating later in :meth:`pump`)."""
        job = self.jobs.request_cancel(job_id)
        if job.state == JobState.CANCELLING:
            with self._lock:
                self._cancel_at.setdefault(job.id, time.monotonic())
        return job

    def running(self) -> list[str]:
        """Ids of jobs whose process this supervisor started and that still run."""
        with self._lock:
            return [j for j, c in self._children.items() if c.popen.poll() is None]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.1) -> Job:
        """Pump until ``job_id`` reaches a final state (for the CLI and tests)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            self.pump()
            job = self.jobs.get(job_id)
            if (
                job.state
                in (
                    JobState.SUCCEEDED,
                    JobState.FAILED,
                    JobState.CANCELLED,
                    JobState.INTERRUPTED,
                )
                and job_id not in self.running()
            ):
                return job
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
            time.sleep(poll)
