"""Process liveness that survives PID reuse (PID + process start time)."""

from __future__ import annotations

import psutil


def process_start_time(pid: int) -> float | None:
    """The process' creation time, or None when it does not exist."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def process_alive(pid: int, started: float | None = None) -> bool:
    """True when ``pid`` runs and (if given) was started at ``started``."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False  # the PID was reused by another process
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False
