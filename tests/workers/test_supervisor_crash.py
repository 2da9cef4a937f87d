"""Jobs outlive a crashed window: the job finishes and records its own state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from app.core.jobs.store import JobService, JobState

PARENT = r"""
import sys, time
from app.core.workspace import Workspace
from app.workers.supervisor import Supervisor
ws = Workspace.open(sys.argv[1])
sup = Supervisor(ws)
assert sup.start(sys.argv[2])
print("started", flush=True)
while True:
    sup.pump()
    time.sleep(0.1)
"""


def test_kill_9_of_the_supervising_process_does_not_lose_the_job(workspace) -> None:
    jobs = JobService(workspace)
    job = jobs.submit("test.count", {"steps": 30, "delay": 0.05})
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(workspace.root), job.id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
    time.sleep(0.5)
    os.kill(parent.pid, signal.SIGKILL)  # the "window" dies
    parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and jobs.get(job.id).state == JobState.RUNNING:
        time.sleep(0.1)
    final = jobs.get(job.id)
    assert final.state == JobState.SUCCEEDED
    assert final.result == {"counted": 30}
    # the new "window" finds nothing stale and the full event log
    assert JobService(workspace).recover_stale() == []
    events = (job.run_dir / "events.jsonl").read_text().splitlines()
    assert sum('"progress"' in e for e in events) == 30
