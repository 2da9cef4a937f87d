"""Qt adapter for jobs: pumps the supervisor, watches the job table and tails event logs.

Everything here is cheap and non-blocking: the supervisor's pump only polls
processes, the table is read by ``updated_at``, and each live job's
``events.jsonl`` is read incrementally. Events are delivered in batches at
most every ``interval_ms`` so a chatty job cannot flood the UI.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.jobs.events import EventReader
from app.core.jobs.store import Job, JobService, JobState
from app.workers.supervisor import Supervisor


class JobsHub(QObject):
    """Signals: ``jobs_changed(list[Job])`` and ``job_events(str, list[dict])``."""

    jobs_changed = Signal(list)
    job_events = Signal(str, list)

    def __init__(self, jobs: JobService, supervisor: Supervisor, interval_ms: int = 250) -> None:
        super().__init__()
        self.jobs = jobs
        self.supervisor = supervisor
        self._readers: dict[str, EventReader] = {}
        self._since = 0.0
        self._seen: dict[str, float] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.tick)

    def start(self) -> None:
        self._timer.start()
        QTimer.singleShot(0, self.tick)

    def stop(self) -> None:
        self._timer.stop()

    def tick(self) -> None:
        """One round: supervise, read changed rows, read new events of live jobs."""
        try:
            self.supervisor.pump()
        except Exception as exc:  # never let a timer tick kill the window
            print(f"supervisor error: {exc}")
        now = time.time()
        # Overlap by a second: a row stamped just before ``now`` may commit after the read.
        rows = self.jobs.changed_since(self._since - 1.0)
        self._since = now
        changed = [j for j in rows if self._seen.get(j.id) != j.updated_at]
        for j in changed:
            self._seen[j.id] = j.updated_at
        if changed:
            self.jobs_changed.emit(changed)
        for job in changed:
            if job.state in (JobState.RUNNING, JobState.CANCELLING):
                self.watch(job)
        for job_id, reader in list(self._readers.items()):
            events = reader.read_new()
            if events:
                self.job_events.emit(job_id, events)
        for job in changed:
            if job.state not in (JobState.RUNNING, JobState.CANCELLING, JobState.QUEUED):
                gone = self._readers.pop(job.id, None)
                if gone is not None and (rest := gone.read_new()):
                    self.job_events.emit(job.id, rest)

    def watch(self, job: Job, *, from_start: bool = False) -> EventReader:
        """Start tailing a job's events (from now, or from the start)."""
        reader = self._readers.get(job.id)
        if reader is None:
            reader = EventReader(job.run_dir / "events.jsonl")
            if not from_start:
                try:
                    reader.offset = reader.path.stat().st_size
                except FileNotFoundError:
                    reader.offset = 0
            self._readers[job.id] = reader
        return reader

    def history(self, job: Job) -> list[dict[str, Any]]:
        """All events of a job so far (e.g. to redraw curves after a restart)."""
        return EventReader(job.run_dir / "events.jsonl").read_all()
