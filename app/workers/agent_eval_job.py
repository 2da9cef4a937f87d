"""Job ``eval.agent``: agent evaluation (:mod:`app.core.eval.agent_eval`) with the model host.

The core runs the tasks; this module only starts the model host for a subject's
library model (and its tools' embedding models), which the core may not do.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.eval.agent_eval import run_agent_eval
from app.core.jobs.context import JobContext


def stop_stale_host(state_dir: Path) -> int | None:
    """Stop the model host a killed earlier attempt of this job left running; its pid or None.

    Only a process whose command line is our host with this job's ready file is touched
    (a SIGKILL of the worker leaves its host child orphaned: nothing else stops it).
    """
    import psutil

    ready = state_dir / "ready.json"
    try:
        pid = int(json.loads(ready.read_text(encoding="utf-8"))["pid"])
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    if "app.workers.host" not in cmd or str(ready) not in cmd:
        return None
    proc.terminate()
    try:
        proc.wait(10)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    return pid


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # recorded as cancelled; the finally blocks stop the model host


def agent_eval_job(ctx: JobContext, **params: Any) -> dict[str, Any]:
    ws = ctx.workspace
    # A cancel the job does not see in time ends in SIGTERM: stop the host, not orphan it.
    signal.signal(signal.SIGTERM, _terminated)
    stale = stop_stale_host(ctx.run_dir / "host")
    if stale is not None:
        ctx.log(f"stopped the model host (pid {stale}) that a killed attempt left running")
    n_ctx = int(params.get("n_ctx") or 4096)

    @contextlib.contextmanager
    def host(served: dict[str, tuple[str, str]], template: str | None) -> Iterator[tuple[str, str]]:
        from app.workers.host_client import HostProcess

        proc = HostProcess(
            threads=ws.settings.threads,
            n_ctx=n_ctx,
            request_log=ctx.run_dir / "host-requests.jsonl",
            state_dir=ctx.run_dir / "host",
        )
        proc.start(dict(served), template=template)
        try:
            yield proc.base_url, proc.token
        finally:
            proc.stop()

    return run_agent_eval(ctx, host, **params)
