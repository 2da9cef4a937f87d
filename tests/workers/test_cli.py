"""The ``demoai`` command line, run as a real process."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.cli import demoai


def test_info_json(tmp_path: Path) -> None:
    r = demoai(tmp_path / "ws", "info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["workspace"] == str(tmp_path / "ws")
    assert info["offline"] is True
    assert info["hardware"]["cpu_threads"] >= 1
    assert info["packages"]["torch"]
    assert info["schema"]["jobs"] >= 1
    assert "no GPU" in info["hardware_summary"] or info["hardware"]["gpus"]


def test_missing_job_is_one_clear_line(tmp_path: Path) -> None:
    r = demoai(tmp_path / "ws", "jobs", "show", "doesnotexist")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("demoai: error: No job with id 'doesnotexist'")
    assert "Traceback" not in r.stderr
    r = demoai(tmp_path / "ws", "--debug", "jobs", "show", "doesnotexist")
    assert "Traceback" in r.stderr


def test_newer_database_is_refused_by_the_cli(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert demoai(ws, "info").returncode == 0
    conn = sqlite3.connect(ws / "demoai.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = (ws / "demoai.db").read_bytes()
    r = demoai(ws, "jobs", "list")
    assert r.returncode == 3
    assert "newer DemoAI" in r.stderr and "Traceback" not in r.stderr
    assert (ws / "demoai.db").read_bytes() == before


def test_check_waits_with_progress_and_fails_on_changed_file(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    demoai(ws, "info")
    model = ws / "models" / "m1" / "weights.bin"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"\0" * 100_000)
    r = demoai(ws, "check")
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr and "succeeded" in r.stderr
    model.write_bytes(b"\1" * 100_000)  # silent corruption
    r = demoai(ws, "check")
    assert r.returncode == 1
    assert "1 file(s) changed" in r.stderr
    listed = json.loads(demoai(ws, "jobs", "list", "--json").stdout)
    assert [j["state"] for j in listed] == ["failed", "succeeded"]
    assert listed[0]["result"]["changed"] == ["models/m1/weights.bin"]


def test_detach_returns_the_job_id_at_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    r = demoai(ws, "check", "--detach")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    deadline = time.time() + 60
    while time.time() < deadline:
        shown = json.loads(demoai(ws, "jobs", "show", job_id, "--json").stdout)
        if shown["state"] == "succeeded":
            break
        time.sleep(0.3)
    assert shown["state"] == "succeeded"
    assert shown["result"]["database"] == "ok"


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_jobs_list_empty(tmp_path: Path, extra: list[str]) -> None:
    r = demoai(tmp_path / "ws", "jobs", "list", *extra)
    assert r.returncode == 0
    assert (json.loads(r.stdout) == []) if extra else ("No jobs yet." in r.stdout)


def test_resume_an_interrupted_job_from_the_cli(tmp_path: Path) -> None:
    from app.core.jobs.store import JobService, JobState
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    jobs = JobService(ws)
    job = jobs.submit("test.count", {"steps": 4, "delay": 0.0})
    # pretend it was running in an app that died
    jobs.claim(job.id)
    jobs.set_pid(job.id, 2**22 - 1, 1.0)
    ws.db.execute("UPDATE jobs SET started_at = 1 WHERE id = ?", (job.id,))
    r = demoai(ws.root, "jobs", "resume", job.id[:12])
    assert r.returncode == 0, r.stderr
    assert jobs.get(job.id).state == JobState.SUCCEEDED
    assert jobs.get(job.id).attempt == 2
    ws.close()


def test_cancel_from_the_cli(tmp_path: Path) -> None:
    from app.core.jobs.store import JobService, JobState
    from app.core.workspace import Workspace
    from app.workers.supervisor import Supervisor

    ws = Workspace.open(tmp_path / "ws")
    sup = Supervisor(ws)
    job = JobService(ws).submit("test.count", {"steps": 2000, "delay": 0.02})
    sup.start(job.id)
    time.sleep(0.5)
    r = demoai(ws.root, "jobs", "cancel", job.id, "--wait")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "cancelled"
    assert sup.wait(job.id, timeout=30).state == JobState.CANCELLED
    ws.close()


def test_help_of_every_command_renders() -> None:
    import argparse

    from app.cli.main import build_parser

    seen = 0

    def walk(p: argparse.ArgumentParser) -> None:
        nonlocal seen
        assert p.format_help()
        seen += 1
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    assert seen > 20
