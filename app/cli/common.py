"""Helpers shared by subcommands: opening the workspace, JSON output, waiting for jobs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from app.core.format import human_duration
from app.core.jobs.events import EventReader
from app.core.jobs.store import Job, JobService, JobState
from app.core.workspace import Workspace


def open_workspace(args: argparse.Namespace) -> Workspace:
    ws = Workspace.open(args.workspace)
    JobService(ws).recover_stale()
    return ws


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write("\n")


def add_job_options(p: argparse.ArgumentParser) -> None:
    """``--detach`` for commands that start a job."""
    p.add_argument(
        "--detach", action="store_true", help="print the job id and return without waiting"
    )


class ProgressPrinter:
    """A one-line progress bar on a terminal; throttled plain lines otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line = ""
        self._written = ""
        self._last_t = 0.0

    def show(self, fraction: float | None, message: str) -> None:
        pct = "  ?%" if fraction is None else f"{fraction * 100:3.0f}%"
        width = 30
        filled = 0 if fraction is None else round(width * fraction)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {pct} {message}"[:120]
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
            self.stream.flush()
        elif line != self._written and now - self._last_t > 1.0:
            self.stream.write(line + "\n")
            self._written = line
            self._last_t = now
        self._last_line = line

    def done(self) -> None:
        """End the bar; off a terminal, print the final state if it was throttled away."""
        if self.tty and self._last_line:
            self.stream.write("\n")
        elif self._last_line and self._last_line != self._written:
            self.stream.write(self._last_line + "\n")
            self._written = self._last_line
        self.stream.flush()


def run_job(
    ws: Workspace,
    kind: str,
    params: dict[str, Any],
    *,
    detach: bool,
    title: str | None = None,
    job: Job | None = None,
) -> int:
    """Submit (or take) a job, start it, and wait with a progress bar unless ``detach``."""
    from app.workers.supervisor import Supervisor

    jobs = JobService(ws)
    if job is None:
        job = jobs.submit(kind, params, title=title)
    sup = Supervisor(ws)
    if detach:
        if not sup.start(job.id, detach=True):
            print(f"{job.id} (queued: it starts when a slot is free and DemoAI is open)")
        else:
            print(job.id)
        return 0
    return wait_job(sup, job.id)


def wait_job(sup: Any, job_id: str) -> int:
    """Pump the supervisor until the job ends; Ctrl+C cancels the job."""
    jobs: JobService = sup.jobs
    reader = EventReader(jobs.get(job_id).run_dir / "events.jsonl")
    reader.offset = _end_offset(reader)
    printer = ProgressPrinter()
    printer.show(0.0, "starting")
    try:
        while True:
            sup.pump()
            for ev in reader.read_new():
                if ev.get("type") == "progress":
                    printer.show(ev.get("fraction"), str(ev.get("message", "")))
            job = jobs.get(job_id)
            if job.state not in (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING) and (
                job_id not in sup.running()
            ):
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        printer.done()
        print("cancelling…", file=sys.stderr)
        sup.cancel(job_id)
        job = sup.wait(job_id)
    printer.done()
    if job.state == JobState.SUCCEEDED:
        print(f"{job.id} succeeded in {human_duration(job.elapsed)}", file=sys.stderr)
        return 0
    msg = job.error or job.state
    print(f"demoai: error: job {job.id} {job.state}: {msg}", file=sys.stderr)
    if job.hint:
        print(f"  {job.hint}", file=sys.stderr)
    return 1


def _end_offset(reader: EventReader) -> int:
    try:
        return reader.path.stat().st_size
    except FileNotFoundError:
        return 0
