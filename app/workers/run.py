"""Child entry point: ``python -m app.workers.run JOB_ID --workspace DIR`` runs one job.

The exit code is the truth: 0 succeeded, 3 cancelled, 1 failed (with the
reason recorded), anything else (a signal, a crash in native code) is a crash
that the supervisor records with the tail of the log.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from app.core.errors import DemoAIError, is_out_of_memory
from app.core.jobs.context import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, Cancelled, JobFailed
from app.core.jobs.registry import get_kind
from app.core.jobs.store import JobService, JobState
from app.core.system.procs import process_start_time
from app.core.workspace import Workspace
from app.workers.context import WorkerContext

OOM_HINT = (
    "Free memory (close other jobs or apps), or lower the batch size, the sequence length "
    "or the LoRA rank."
)


def _classify(exc: BaseException) -> tuple[str, str | None]:
    """A user-facing message and hint for an exception from a job."""
    if isinstance(exc, JobFailed):
        return exc.message, exc.hint
    if isinstance(exc, DemoAIError):
        return exc.message, exc.hint
    name = type(exc).__name__
    if is_out_of_memory(exc):
        return f"Out of memory: {exc}", OOM_HINT
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"The disk is full: {exc}", "Free disk space, then resume or restart the job."
    return f"Unexpected error: {name}: {exc}", "See the job log for details (Open log)."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.workers.run")
    parser.add_argument("job_id")
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args(argv)

    ws = Workspace.open(args.workspace, create=False)
    jobs = JobService(ws)
    job = jobs.get(args.job_id)
    if job.state not in (JobState.RUNNING, JobState.CANCELLING):
        print(f"job {job.id} is {job.state}, not claimed for running", file=sys.stderr)
        return EXIT_FAILED
    jobs.set_pid(job.id, os.getpid(), process_start_time(os.getpid()))
    ctx = WorkerContext(ws, job.id, job.attempt)
    ctx.events.emit("state", state="running", attempt=job.attempt, pid=os.getpid())
    code = EXIT_FAILED
    try:
        if job.state == JobState.CANCELLING or ctx.cancelled():
            raise Cancelled()
        fn = get_kind(job.kind).load()
        ret = fn(ctx, **job.params)
        result = ctx.final_result
        if result is None and isinstance(ret, dict):
            result = ret
        jobs.finish(job.id, JobState.SUCCEEDED, exit_code=EXIT_OK, result=result)
        ctx.events.emit("state", state="succeeded", attempt=job.attempt)
        code = EXIT_OK
    except (Cancelled, KeyboardInterrupt):
        jobs.finish(job.id, JobState.CANCELLED, exit_code=EXIT_CANCELLED, result=ctx.final_result)
        ctx.events.emit("state", state="cancelled", attempt=job.attempt)
        code = EXIT_CANCELLED
    except BaseException as exc:  # every failure is recorded, then the exit code tells
        traceback.print_exc()
        message, hint = _classify(exc)
        ctx.events.emit("error", message=message, hint=hint)
        jobs.finish(
            job.id,
            JobState.FAILED,
            exit_code=EXIT_FAILED,
            error=message,
            hint=hint,
            result=ctx.final_result,
        )
        ctx.events.emit("state", state="failed", attempt=job.attempt)
        code = EXIT_FAILED
    finally:
        ctx.close()
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
