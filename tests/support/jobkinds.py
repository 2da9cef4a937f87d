"""Job kinds used by the tests (loaded in workers through DEMOAI_JOB_PLUGINS)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from app.core.jobs.context import JobContext, JobFailed
from app.core.jobs.registry import JobKind, register_kind
from app.core.store.files import atomic_write_json


def count(
    ctx: JobContext, steps: int = 10, delay: float = 0.05, fail_at: int = -1
) -> dict[str, Any]:
    """Counts to ``steps``; checkpoints every step; resumes from the last checkpoint.

    Each executed step is appended to ``steps.log`` so tests can see that no step
    ran twice or was skipped across a kill and a resume.
    """
    ckpt = ctx.checkpoint_dir / "state.json"
    start = json.loads(ckpt.read_text())["done"] if ckpt.exists() else 0
    ctx.log(f"attempt {ctx.attempt}: starting at step {start}")
    with open(ctx.run_dir / "steps.log", "a") as fh:
        for step in range(start, steps):
            ctx.check_cancelled()
            if step == fail_at:
                raise JobFailed(f"step {step} failed on purpose", "This is a test job.")
            time.sleep(delay)
            fh.write(f"{step}\n")
            fh.flush()
            os.fsync(fh.fileno())
            atomic_write_json(ckpt, {"done": step + 1})
            ctx.metric("value", step, step * 2.0)
            ctx.progress((step + 1) / steps, f"step {step + 1}/{steps}")
    return {"counted": steps}


def stubborn(ctx: JobContext, seconds: float = 60.0) -> None:
    """Ignores cancel requests (to test terminate/kill escalation)."""
    ctx.progress(None, "ignoring cancel")
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.05)


def crash(ctx: JobContext) -> None:
    """Prints something, then dies hard without reporting."""
    print("about to crash hard", flush=True)
    os._exit(17)


register_kind(JobKind("test.count", "tests.support.jobkinds:count", "Count", resumable=True))
register_kind(JobKind("test.stubborn", "tests.support.jobkinds:stubborn", "Stubborn"))
register_kind(JobKind("test.crash", "tests.support.jobkinds:crash", "Crash"))
register_kind(
    JobKind("test.gpu_count", "tests.support.jobkinds:count", "GPU count", resource="gpu")
)
