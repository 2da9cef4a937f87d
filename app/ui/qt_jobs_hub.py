"""Qt adapter for jobs: pumps the supervisor, watches the job table and tails event logs.

A round (supervise, read changed rows, read new events of live jobs) runs on a
thread of the hub's own, never on the UI thread: starting a job's process, a
database write that waits for another process's lock, or a long events file
must not freeze the window. Its results come back to the UI thread, where the
signals are emitted. Events are delivered in batches at most every
``interval_ms`` so a chatty job cannot flood the UI.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.jobs.events import EventReader
from app.core.jobs.store import Job, JobService, JobState
from app.workers.supervisor import Supervisor

_LIVE = (JobState.RUNNING, JobState.CANCELLING)


@dataclass
class _Round:
    """What one round found, handed from the hub's thread to the UI thread."""

    changed: list[Job] = field(default_factory=list)
    events: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)


class JobsHub(QObject):
    """Signals: ``jobs_changed(list[Job])`` and ``job_events(str, list[dict])``.

    Both are emitted on the UI thread. :meth:`tick` asks for a round now; it may
    be called from any thread and returns at once.
    """

    jobs_changed = Signal(list)
    job_events = Signal(str, list)
    _wake = Signal()  # tick() from any thread -> _schedule on the UI thread
    _done = Signal(object)  # a round's results, emitted on the hub's thread

    def __init__(self, jobs: JobService, supervisor: Supervisor, interval_ms: int = 250) -> None:
        super().__init__()
        self.jobs = jobs
        self.supervisor = supervisor
        self._readers: dict[str, EventReader] = {}
        self._readers_lock = threading.Lock()  # watch() on the UI thread, rounds on the hub's
        self._since = 0.0
        self._seen: dict[str, float] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._busy = False  # a round is running (only touched on the UI thread)
        self._again = False  # a round was asked for while one ran
        self._stopped = False
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._schedule)
        self._wake.connect(self._schedule)
        self._done.connect(self._deliver)

    def start(self) -> None:
        self._stopped = False
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-hub")
        self._timer.start()
        QTimer.singleShot(0, self._schedule)

    def stop(self) -> None:
        """Stop the rounds; waits for one in flight (it never blocks for long)."""
        self._stopped = True
        self._timer.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def tick(self) -> None:
        """Ask for a round as soon as possible (e.g. right after a submit or a cancel)."""
        self._wake.emit()

    def _schedule(self) -> None:
        if self._stopped or self._pool is None:
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        self._pool.submit(self._round_and_report)

    def _round_and_report(self) -> None:
        try:
            found = self._round()
        except Exception as exc:  # never let a round kill the hub
            print(f"jobs hub error: {exc}")
            found = _Round()
        self._done.emit(found)

    def _round(self) -> _Round:
        """One round, on the hub's thread: supervise, read changed rows and new events."""
        try:
            self.supervisor.pump()
        except Exception as exc:
            print(f"supervisor error: {exc}")
        out = _Round()
        now = time.time()
        # Overlap by a second: a row stamped just before ``now`` may commit after the read.
        rows = self.jobs.changed_since(self._since - 1.0)
        self._since = now
        out.changed = [j for j in rows if self._seen.get(j.id) != j.updated_at]
        for j in out.changed:
            self._seen[j.id] = j.updated_at
        for job in out.changed:
            if job.state in _LIVE:
                self.watch(job)
        with self._readers_lock:
            readers = list(self._readers.items())
        for job_id, reader in readers:
            events = reader.read_new()
            if events:
                out.events.append((job_id, events))
        for job in out.changed:
            if job.state not in (*_LIVE, JobState.QUEUED):
                with self._readers_lock:
                    gone = self._readers.pop(job.id, None)
                if gone is not None and (rest := gone.read_new()):
                    out.events.append((job.id, rest))
        return out

    def _deliver(self, found: _Round) -> None:
        """On the UI thread: emit what the round found, then run a round asked for meanwhile."""
        self._busy = False
        if not self._stopped:
            if found.changed:
                self.jobs_changed.emit(found.changed)
            for job_id, events in found.events:
                self.job_events.emit(job_id, events)
        if self._again:
            self._again = False
            self._schedule()

    def watch(self, job: Job, *, from_start: bool = False) -> EventReader:
        """Start tailing a job's events (from now, or from the start)."""
        with self._readers_lock:
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
