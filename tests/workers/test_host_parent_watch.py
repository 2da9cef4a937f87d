"""A model host whose parent is killed stops by itself (no orphan holding a model's memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

PARENT = """
import sys, time
from app.workers.host_client import HostProcess
h = HostProcess(accept_models=True)
h.start({})
print(h.pid, flush=True)
time.sleep(600)
"""


def test_a_host_stops_when_the_process_that_started_it_is_killed() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, cwd=REPO, env=env, text=True
    )
    host_pid = None
    try:
        assert parent.stdout is not None
        host_pid = int(parent.stdout.readline())
        host = psutil.Process(host_pid)
        assert host.is_running() and host.ppid() == parent.pid
        time.sleep(1.5)  # a few of the host's checks while its parent lives: it stays up
        assert host.is_running() and host.status() != psutil.STATUS_ZOMBIE
        parent.send_signal(signal.SIGKILL)  # what a cancel escalated to kill does to a job
        parent.wait(30)
        # the host notices within a second or two (generous bound for a loaded machine)
        gone, alive = psutil.wait_procs([host], timeout=60)
        assert host in gone and not alive
    finally:
        if parent.poll() is None:
            parent.kill()
        if host_pid is not None and psutil.pid_exists(host_pid):
            try:
                psutil.Process(host_pid).kill()
            except psutil.Error:
                pass
