"""``demoai jobs list|show|cancel|resume``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job
from app.core.format import human_duration
from app.core.jobs.store import JobService, JobState


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="list, show, cancel and resume background jobs")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    ls = jsub.add_parser("list", help="jobs, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--state", choices=[s.value for s in JobState], action="append")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_list)
    show = jsub.add_parser("show", help="one job with its log tail")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--log", type=int, default=20, metavar="N", help="log lines to show")
    show.set_defaults(func=cmd_show)
    cancel = jsub.add_parser("cancel", help="ask a job to stop")
    cancel.add_argument("job_id")
    cancel.add_argument("--wait", action="store_true", help="wait until it has stopped")
    cancel.set_defaults(func=cmd_cancel)
    resume = jsub.add_parser("resume", help="resume an interrupted, cancelled or failed job")
    resume.add_argument("job_id")
    add_job_options(resume)
    resume.set_defaults(func=cmd_resume)


def cmd_list(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    states = {JobState(s) for s in args.state} if args.state else None
    jobs = JobService(ws).list_jobs(states, limit=args.limit)
    if args.json:
        print_json([j.to_dict() for j in jobs])
        return 0
    if not jobs:
        print("No jobs yet.")
        return 0
    print(f"{'ID':24} {'KIND':20} {'STATE':11} {'PROGRESS':>8} {'ELAPSED':>8}  TITLE")
    for j in jobs:
        pct = "-" if j.progress is None else f"{j.progress * 100:.0f}%"
        print(
            f"{j.id:24} {j.kind:20} {j.state:11} {pct:>8} {human_duration(j.elapsed):>8}  {j.title}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    svc = JobService(ws)
    job = svc.get(args.job_id)
    tail = svc.log_tail(job.id, args.log)
    if args.json:
        print_json({**job.to_dict(), "log_tail": tail})
        return 0
    print(f"Job       {job.id}")
    print(f"Kind      {job.kind}  ({job.title})")
    print(f"State     {job.state}  attempt {job.attempt}")
    pct = "-" if job.progress is None else f"{job.progress * 100:.0f}%"
    print(f"Progress  {pct}  {job.message}")
    print(f"Elapsed   {human_duration(job.elapsed)}")
    print(f"Params    {job.params}")
    if job.error:
        print(f"Error     {job.error}")
    if job.hint:
        print(f"Hint      {job.hint}")
    if job.result:
        print(f"Result    {job.result}")
    print(f"Run dir   {job.run_dir}")
    if tail:
        print("--- log ---")
        print(tail.rstrip())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from app.workers.supervisor import Supervisor

    ws = open_workspace(args)
    sup = Supervisor(ws)
    job = sup.cancel(args.job_id)
    print(f"{job.id} {job.state}")
    if args.wait and job.state == JobState.CANCELLING:
        while (job := sup.jobs.get(job.id)).state == JobState.CANCELLING:
            sup.pump()
            time.sleep(0.2)
        print(f"{job.id} {job.state}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    job = JobService(ws).resume(args.job_id)
    return run_job(ws, job.kind, job.params, detach=args.detach, job=job)
