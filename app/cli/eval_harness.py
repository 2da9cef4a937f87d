"""``demoai eval harness``: an lm-evaluation-harness task as an eval run.

Form::

    demoai eval harness --model M --task FILE.yaml|NAME [--limit N] [--num-fewshot K] \
        [--dataset D[@V] | --dataset SPLIT=D[@V]]... [--n-ctx N] [--threads N] [--name NAME] \
        [--detach] [--json]

The harness (``lm-eval``, pinned; only the job imports it) runs the task against
the model through the model host and scores it. The run is an eval run like the
others (``demoai eval show/compare/export/gate``). A task whose data is not in
the dataset library fails before any job exists (exit code 2), naming the
dataset to import and the command; nothing is downloaded.
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job


def register(esub: Any) -> None:
    p = esub.add_parser(
        "harness",
        help="an lm-evaluation-harness task (YAML file or task name) against a library model",
    )
    p.add_argument("--model", required=True, metavar="ID")
    p.add_argument("--task", required=True, metavar="FILE.yaml|NAME")
    p.add_argument("--limit", type=int, help="the first N documents only")
    p.add_argument("--num-fewshot", type=int, dest="num_fewshot", metavar="K")
    p.add_argument(
        "--dataset",
        action="append",
        dest="datasets",
        metavar="[SPLIT=]D[@V]",
        help="library dataset for the evaluated split (or SPLIT=D for another); repeat",
    )
    p.add_argument("--n-ctx", type=int, dest="n_ctx", help="context of the model (default 2048)")
    p.add_argument("--threads", type=int)
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--name")
    p.add_argument(
        "--trust-task-code",
        action="store_true",
        help="run a task FILE's code (lm-eval renders its templates unsandboxed and imports "
        "its !function helpers); needed for task files, not for lm-eval's own task names",
    )
    p.add_argument("--json", action="store_true")
    add_job_options(p)
    p.set_defaults(func=cmd_harness)


def _config(args: argparse.Namespace) -> Any:
    from app.core.eval.harness import HarnessConfig, parse_dataset_options

    data: dict[str, Any] = {
        "models": [args.model],
        "task": args.task,
        "datasets": parse_dataset_options(args.datasets),
        "trust_task_code": bool(getattr(args, "trust_task_code", False)),
    }
    for key in ("limit", "num_fewshot", "n_ctx", "threads", "bootstrap", "name"):
        val = getattr(args, key, None)
        if val is not None:
            data[key] = val
    return HarnessConfig.from_dict(data)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def cmd_harness(args: argparse.Namespace) -> int:
    import app.workers  # noqa: F401  (registers the eval.harness kind)
    from app.core.eval.harness import KIND, submit_harness
    from app.core.eval.runner import EvalStore, model_label

    ws = open_workspace(args)
    job = submit_harness(ws, _config(args))
    rc = run_job(ws, KIND, {}, detach=args.detach, job=job)
    if args.detach or rc != 0:
        return rc
    store = EvalStore(ws)
    run = store.get_run(job.id)
    agg = store.aggregates(job.id)
    harness = (run.summary or {}).get("harness", {})
    if args.json:
        print_json({"run_id": job.id, "aggregates": agg, "harness": harness})
        return 0
    print(f"run {job.id}  (lm-eval {harness.get('version')}, task {harness.get('task')})")
    for model, per in agg.items():
        for metric, a in per.items():
            print(
                f"  {model_label(ws, model)}: {metric} {_fmt(a.get('value'))}  95% CI "
                f"[{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}]  n {a.get('n')}"
            )
    for key, val in sorted((harness.get("results") or {}).items()):
        if "," in key:  # metric,filter (the rest is the task's name and size)
            print(f"  harness {key}: {val}")
    return 0
