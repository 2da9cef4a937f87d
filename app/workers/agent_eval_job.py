"""Job ``eval.agent``: agent evaluation (:mod:`app.core.eval.agent_eval`) with the model host.

The core runs the tasks; this module only starts the model host for a subject's
library model (and its tools' embedding models), which the core may not do.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from app.core.eval.agent_eval import run_agent_eval
from app.core.jobs.context import JobContext


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # recorded as cancelled; the finally blocks stop the model host


def agent_eval_job(ctx: JobContext, **params: Any) -> dict[str, Any]:
    ws = ctx.workspace
    # A cancel the job does not see in time ends in SIGTERM: stop the host, not orphan it.
    signal.signal(signal.SIGTERM, _terminated)
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
