"""``demoai pipeline``: versioned, resumable data -> train -> eval gate -> export chains.

Forms::

    demoai pipeline create FILE            # a spec (YAML or JSON): new pipeline or new version
    demoai pipeline import FILE [--name NAME]
    demoai pipeline run NAME [--snapshot RUN [--no-reuse]] [--json]
    demoai pipeline list [--json]
    demoai pipeline show NAME[@N]|RUN [--json]
    demoai pipeline diff RUN RUN | NAME@N NAME@M
    demoai pipeline export NAME[@N] [--out FILE] [--format yaml|json]
    demoai pipeline watch [--once] [--interval S]

``run`` exits 4 when an eval gate fails (export is not run), 1 when a step fails; running
again resumes at the first step that did not finish. See docs/pipelines.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from app.cli.common import ProgressPrinter, open_workspace, print_json
from app.core.errors import NotFoundError


def register(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="versioned data -> train -> eval gate -> export chains")
    psub = p.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    c = psub.add_parser("create", help="store a spec file: a new pipeline or a new version")
    c.add_argument("file")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_create)

    i = psub.add_parser("import", help="import a spec file (validated), optionally renamed")
    i.add_argument("file")
    i.add_argument("--name", help="store it under this name")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_create)

    r = psub.add_parser("run", help="run a pipeline (reusing finished steps, resuming others)")
    r.add_argument("pipeline", nargs="?")
    r.add_argument("--snapshot", metavar="RUN", help="repeat this run: its spec and pinned inputs")
    r.add_argument(
        "--no-reuse",
        action="store_true",
        help="compute every step again (with --snapshot: check the results are identical)",
    )
    r.add_argument(
        "--trust-task-code",
        action="store_true",
        help="run the code of harness steps' task FILES (lm-eval renders their templates "
        "unsandboxed and imports their helpers); not needed for lm-eval's own task names",
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    ls = psub.add_parser("list", help="pipelines with their last run")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = psub.add_parser("show", help="a pipeline (spec, runs) or a run (steps, outputs, gate)")
    sh.add_argument("ref", metavar="NAME[@N]|RUN")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    d = psub.add_parser("diff", help="what differs between two runs' snapshots or two versions")
    d.add_argument("a", metavar="RUN|NAME@N")
    d.add_argument("b", metavar="RUN|NAME@N")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_diff)

    e = psub.add_parser("export", help="write a spec as YAML or JSON")
    e.add_argument("ref", metavar="NAME[@N]")
    e.add_argument("--out", metavar="FILE", help="default: standard output")
    e.add_argument("--format", choices=["yaml", "json"], help="default: from --out, else yaml")
    e.set_defaults(func=cmd_export)

    w = psub.add_parser("watch", help="run pipelines whose trigger dataset has a new version")
    w.add_argument("--once", action="store_true", help="check once, run what is due, and exit")
    w.add_argument("--interval", type=float, default=60.0, metavar="S")
    w.add_argument(
        "--trust-task-code",
        action="store_true",
        help="run the code of harness steps' task FILES (lm-eval renders their templates "
        "unsandboxed and imports their helpers); not needed for lm-eval's own task names",
    )
    w.set_defaults(func=cmd_watch)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _waiter(ws: Any) -> Any:
    """Start a queued job on this process's supervisor and wait for its end (Ctrl+C cancels)."""
    from app.core.jobs.events import EventReader
    from app.core.jobs.store import ACTIVE_STATES, Job, JobState
    from app.workers.supervisor import Supervisor

    sup = Supervisor(ws)

    def wait(job: Job) -> Job:
        if job.state == JobState.QUEUED:
            sup.start(job.id)
        reader = EventReader(job.run_dir / "events.jsonl")
        try:
            reader.offset = reader.path.stat().st_size
        except FileNotFoundError:
            reader.offset = 0
        printer = ProgressPrinter()
        last_check = time.monotonic()
        try:
            while True:
                sup.pump()
                for ev in reader.read_new():
                    if ev.get("type") == "progress":
                        printer.show(ev.get("fraction"), str(ev.get("message", "")))
                cur = sup.jobs.get(job.id)
                if cur.state not in ACTIVE_STATES and job.id not in sup.running():
                    break
                if time.monotonic() - last_check > 2.0:
                    # A job started by an earlier (killed) process: notice when it is gone.
                    sup.jobs.recover_stale()
                    last_check = time.monotonic()
                time.sleep(0.1)
        except KeyboardInterrupt:
            printer.done()
            _say("cancelling…")
            sup.cancel(job.id)
            sup.wait(job.id)
            raise
        printer.done()
        return sup.jobs.get(job.id)

    return wait


def cmd_create(args: argparse.Namespace) -> int:
    from app.core.runs.spec import PipelineSpec
    from app.core.runs.store import PipelineStore

    spec = PipelineSpec.load(args.file)
    if getattr(args, "name", None):
        spec = PipelineSpec.from_dict({**spec.to_dict(), "name": args.name})
    ws = open_workspace(args)
    rec, new = PipelineStore(ws).save(spec)
    if args.json:
        print_json({"id": rec.id, "name": rec.name, "version": rec.version, "new": new})
    else:
        print(f"{rec.name} v{rec.version}" + ("" if new else " (unchanged)"))
    return 0


def _print_outcome(outcome: Any) -> None:
    run = outcome.run
    print(f"run {run.id}: {run.state}")
    for s in run.steps:
        job = f" job {s.job_id}" if s.job_id else ""
        print(f"  {s.step_id:<12} {s.kind:<7} {s.state:<11}{job}")
        if s.kind in ("eval", "harness") and s.output:
            for metric, a in (s.output.get("metrics") or {}).items():
                base = (s.output.get("baseline_metrics") or {}).get(metric) or {}
                bv = f"  baseline {_fmt(base.get('value'))}" if base else ""
                print(
                    f"      {metric:<14} {_fmt(a.get('value'))}  95% CI "
                    f"[{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}]{bv}"
                )
        if s.kind == "export" and s.output:
            for o in s.output.get("outputs", []):
                print(f"      {o['quant']}: {o['path']}")
    if outcome.gate is not None:
        print(outcome.gate["text"])
    for sid, verdict in outcome.compared.items():
        print(f"  repeat of {run.snapshot.get('repeat_of')}: {sid} {verdict}")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def cmd_run(args: argparse.Namespace) -> int:
    from app.core.errors import ConfigError
    from app.core.runs.engine import PipelineRunner

    if not args.pipeline and not args.snapshot:
        raise ConfigError("Name a pipeline, or give --snapshot RUN.")
    ws = open_workspace(args)
    runner = PipelineRunner(
        ws, _waiter(ws), _say, trust_task_code=bool(getattr(args, "trust_task_code", False))
    )
    outcome = runner.run(args.pipeline or "", snapshot_of=args.snapshot, reuse=not args.no_reuse)
    if args.json:
        print_json(
            {
                "run": outcome.run.to_dict(),
                "exit_code": outcome.exit_code,
                "gate": outcome.gate,
                "compared": outcome.compared,
            }
        )
    else:
        _print_outcome(outcome)
    if outcome.compared and any(v != "identical" for v in outcome.compared.values()):
        return 1
    return outcome.exit_code


def cmd_list(args: argparse.Namespace) -> int:
    from app.core.runs.store import PipelineStore

    store = PipelineStore(open_workspace(args))
    rows: list[dict[str, Any]] = []
    for rec in store.pipelines():
        runs = store.runs(rec.id)
        rows.append(
            {
                "name": rec.name,
                "version": rec.version,
                "steps": [s.id for s in rec.spec.steps],
                "trigger": rec.spec.trigger,
                "last_run": runs[0].id if runs else None,
                "last_state": runs[0].state if runs else None,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no pipelines")
    for r in rows:
        last = f"{r['last_state']} ({r['last_run']})" if r["last_run"] else "never run"
        print(f"{r['name']:<24} v{r['version']:<3} {' > '.join(r['steps']):<40} {last}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from app.core.runs.store import PipelineStore

    store = PipelineStore(open_workspace(args))
    try:
        rec = store.get(args.ref)
    except NotFoundError:
        run = store.get_run(args.ref)
        if args.json:
            print_json(run.to_dict())
            return 0
        from app.core.runs.engine import RunOutcome

        gate = next(
            (s.output.get("gate") for s in run.steps if s.output and s.output.get("gate")), None
        )
        _print_outcome(RunOutcome(run, 0, gate))
        return 0
    runs = store.runs(rec.id)
    if args.json:
        print_json({**rec.to_dict(), "runs": [r.to_dict() for r in runs]})
        return 0
    print(f"{rec.name} v{rec.version}  (versions {store.versions(rec.id)})")
    print(rec.spec.dump("yaml"), end="")
    print("runs:" if runs else "no runs")
    for r in runs:
        print(f"  {r.id}  v{r.version}  {r.state:<11} {r.reason}")
    return 0


def _diff_side(store: Any, ref: str) -> Any:
    try:
        return store.get_run(ref).snapshot
    except NotFoundError:
        return store.get(ref).spec.to_dict()


def cmd_diff(args: argparse.Namespace) -> int:
    from app.core.runs.engine import diff
    from app.core.runs.store import PipelineStore

    store = PipelineStore(open_workspace(args))
    rows = diff(_diff_side(store, args.a), _diff_side(store, args.b))
    if args.json:
        print_json([{"path": p, "a": a, "b": b} for p, a, b in rows])
        return 0
    if not rows:
        print("no differences")
    for path, a, b in rows:
        print(f"{path}\n  - {a}\n  + {b}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.core.runs.store import PipelineStore
    from app.core.store.files import atomic_write_text

    rec = PipelineStore(open_workspace(args)).get(args.ref)
    fmt = args.format or ("json" if args.out and args.out.endswith(".json") else "yaml")
    text = rec.spec.dump(fmt)
    if args.out:
        atomic_write_text(args.out, text)
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from app.core.runs.engine import PipelineRunner, due_triggers

    ws = open_workspace(args)
    runner = PipelineRunner(
        ws, _waiter(ws), _say, trust_task_code=bool(getattr(args, "trust_task_code", False))
    )
    worst = 0
    while True:
        due = due_triggers(ws)
        if not due and args.once:
            print("nothing to run")
        for name, why in due:
            print(f"{name}: {why}")
            try:
                outcome = runner.run(name, reason=why)
            except Exception as exc:  # one failing pipeline does not stop the others
                print(f"demoai: error: {name}: {exc}", file=sys.stderr)
                worst = max(worst, 1)
                continue
            _print_outcome(outcome)
            worst = max(worst, outcome.exit_code)
        if args.once:
            return worst
        time.sleep(max(args.interval, 1.0))
