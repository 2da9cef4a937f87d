"""Jobs in real child processes: progress, cancel, kill -9, stale rows, resume."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from app.core.errors import ConfigError, NotFoundError
from app.core.jobs.events import EventReader
from app.core.jobs.store import JobService, JobState
from app.workers.supervisor import Supervisor


def _wait_until(cond, timeout: float = 30.0, sup: Supervisor | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sup is not None:
            sup.pump()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _steps(job) -> list[int]:
    path = job.run_dir / "steps.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_progress_metrics_and_result_reach_the_parent(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.count", {"steps": 8, "delay": 0.02})
    reader = EventReader(job.run_dir / "events.jsonl")
    seen: list[dict] = []
    assert sup.start(job.id)
    while True:
        seen += reader.read_new()
        done = sup.jobs.get(job.id)
        if done.state == JobState.SUCCEEDED and job.id not in sup.running():
            break
        sup.pump()
        time.sleep(0.02)
    seen += reader.read_new()
    fractions = [e["fraction"] for e in seen if e["type"] == "progress"]
    assert fractions == pytest.approx([(i + 1) / 8 for i in range(8)])
    assert [e["value"] for e in seen if e["type"] == "metric"] == [i * 2.0 for i in range(8)]
    assert [e["state"] for e in seen if e["type"] == "state"] == ["running", "succeeded"]
    final = sup.jobs.get(job.id)
    assert final.result == {"counted": 8}
    assert final.progress == 1.0 and final.exit_code == 0
    assert final.elapsed is not None and final.elapsed > 0.1


def test_cancel_stops_a_running_job_cooperatively(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.count", {"steps": 1000, "delay": 0.02})
    sup.start(job.id)
    _wait_until(lambda: len(_steps(job)) >= 3, sup=sup)
    assert sup.cancel(job.id).state == JobState.CANCELLING
    final = sup.wait(job.id, timeout=30)
    assert final.state == JobState.CANCELLED
    assert final.exit_code == 3
    assert len(_steps(job)) < 1000


def test_cancel_escalates_to_terminate_for_a_job_that_ignores_it(workspace) -> None:
    sup = Supervisor(workspace, cancel_grace_s=0.5, terminate_grace_s=2.0)
    job = sup.jobs.submit("test.stubborn", {"seconds": 120})
    sup.start(job.id)
    _wait_until(lambda: sup.jobs.get(job.id).pid is not None, sup=sup)
    time.sleep(0.5)
    sup.cancel(job.id)
    t0 = time.monotonic()
    final = sup.wait(job.id, timeout=30)
    assert final.state == JobState.CANCELLED
    assert time.monotonic() - t0 < 15


def test_queued_job_cancels_at_once(workspace) -> None:
    jobs = JobService(workspace)
    job = jobs.submit("test.count", {"steps": 3})
    assert jobs.request_cancel(job.id).state == JobState.CANCELLED
    with pytest.raises(ConfigError, match="nothing to cancel"):
        jobs.request_cancel(job.id)


def test_kill_9_of_a_child_marks_it_failed_with_its_log_tail(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.count", {"steps": 1000, "delay": 0.02})
    sup.start(job.id)
    _wait_until(lambda: len(_steps(job)) >= 3, sup=sup)
    pid = sup.jobs.get(job.id).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    final = sup.wait(job.id, timeout=30)
    assert final.state == JobState.FAILED
    assert final.exit_code == -signal.SIGKILL
    assert "SIGKILL" in (final.error or "")
    assert "attempt 1: starting at step 0" in (final.error or "")  # the log tail


def test_a_crash_in_native_style_is_failed_with_output(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.crash")
    sup.start(job.id)
    final = sup.wait(job.id, timeout=30)
    assert final.state == JobState.FAILED and final.exit_code == 17
    assert "about to crash hard" in (final.error or "")


def test_job_failure_is_recorded_with_message_and_hint(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.count", {"steps": 5, "fail_at": 2, "delay": 0.0})
    sup.start(job.id)
    final = sup.wait(job.id, timeout=30)
    assert final.state == JobState.FAILED
    assert final.error == "step 2 failed on purpose"
    assert final.hint == "This is a test job."


def test_stale_running_row_becomes_interrupted_and_resumes_without_repeats(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.count", {"steps": 40, "delay": 0.03})
    sup.start(job.id, detach=True)  # nobody watches it, like an app that crashed
    _wait_until(lambda: len(_steps(job)) >= 5)
    pid = sup.jobs.get(job.id).pid
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: not Path(f"/proc/{pid}").exists() or _is_zombie(pid))
    assert sup.jobs.get(job.id).state == JobState.RUNNING  # the row does not know yet
    # Start-up of a new app instance:
    fresh = JobService(workspace)
    assert fresh.recover_stale() == [job.id]
    assert fresh.get(job.id).state == JobState.INTERRUPTED
    assert fresh.get(job.id).resumable
    fresh.resume(job.id)
    sup2 = Supervisor(workspace)
    sup2.pump()
    final = sup2.wait(job.id, timeout=60)
    assert final.state == JobState.SUCCEEDED and final.attempt == 2
    steps = _steps(job)
    # Each step ran exactly once across both attempts; at most the step that was
    # being written at the kill can repeat (it was not checkpointed).
    assert sorted(set(steps)) == list(range(40))
    assert len(steps) - len(set(steps)) <= 1


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_only_one_gpu_job_runs_at_a_time(workspace) -> None:
    sup = Supervisor(workspace)
    a = sup.jobs.submit("test.gpu_count", {"steps": 20, "delay": 0.03})
    b = sup.jobs.submit("test.gpu_count", {"steps": 2, "delay": 0.0})
    c = sup.jobs.submit("test.count", {"steps": 2, "delay": 0.0})
    sup.pump()
    assert sup.jobs.get(a.id).state == JobState.RUNNING
    assert sup.jobs.get(b.id).state == JobState.QUEUED  # waits for the GPU slot
    assert sup.jobs.get(c.id).state == JobState.RUNNING  # CPU job runs beside it
    assert sup.wait(b.id, timeout=60).state == JobState.SUCCEEDED
    assert sup.jobs.get(b.id).started_at >= sup.jobs.get(a.id).finished_at


def test_missing_job_and_unknown_kind(workspace) -> None:
    jobs = JobService(workspace)
    with pytest.raises(NotFoundError, match="No job"):
        jobs.get("nope")
    with pytest.raises(NotFoundError, match="Unknown job kind"):
        jobs.submit("no.such.kind")


def test_resume_refused_for_non_resumable_or_running(workspace) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("test.crash")
    sup.start(job.id)
    sup.wait(job.id, timeout=30)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        sup.jobs.resume(job.id)
